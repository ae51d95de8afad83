"""ImageNet (tfds `imagenet2012`, prepared in a data_dir) with the paper's training recipe.

    python train.py --config=configs/imagenet.py:variant=dws,alpha=0.75,resolution=192 \
        --config.data.data_dir=/path/to/tensorflow_datasets

What the paper states (Section 4, "Training"): TensorFlow, RMSprop with asynchronous gradient
descent as in Inception V3, less regularisation and augmentation than for large models (no side
heads, no label-smoothing ablation given, fewer small crops), and very little or no weight decay
on the depthwise filters. Where the paper is silent we follow the Inception V3 recipe it points to
(Szegedy et al. 2016, Section 8: RMSprop decay 0.9, epsilon 1.0, learning rate 0.045 decayed by
0.94 every two epochs, gradient clipping at 2.0, label smoothing 0.1) and TF-slim's MobileNet v1
defaults (weight decay 4e-5, dropout 0.001, batch-norm decay 0.9997, weight EMA 0.9999). Our
additions, for synchronous large-batch training: the learning rate scales linearly with the
global batch (given per 256 images) and warms up over 5 epochs. The epoch count is ours too.
"""
from configs import base


def get_config(arg=None):
  config = base.get_base_config()
  config.model.update(num_classes=1000, dropout_rate=0.001, dtype="bfloat16", bn_momentum=0.9997)
  config.data.update(source="tfds", tfds_name="imagenet2012", eval_split="validation",
                     resolution=224, min_area=0.25, cache=False, image_dtype="bfloat16")
  config.train.update(global_batch_size=1024, eval_batch_size=1000, num_epochs=200.0,
                      log_every_steps=100, checkpoint_every_steps=2000, eval_every_steps=5000)
  config.optimizer.update(
      name="rmsprop", learning_rate=0.045, schedule="exponential", warmup_epochs=5.0,
      decay_rate=0.94, decay_epochs=2.0, momentum=0.9, rmsprop_decay=0.9, epsilon=1.0,
      weight_decay=4e-5, weight_decay_on_depthwise=False, grad_clip_norm=2.0,
      label_smoothing=0.1, ema_decay=0.9999)
  return base.apply_argument(config, arg)
