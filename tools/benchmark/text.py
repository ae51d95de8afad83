"""The benchmark's report as text, for a reader (`--json` prints the same figures as JSON)."""
from typing import Any


def print_lanes(report: dict[str, Any]) -> None:
  single = report["one_run"]
  print(f"device: {single['device']}; {single['variant']} alpha={single['alpha']} "
        f"{single['resolution']} px, batch {single['batch']}, {single['dtype']}")
  print(f"one run on {single['threads']} cores: train {single['train_images_per_s']:.1f} img/s")
  rates = " + ".join(f"{lane['train_images_per_s']:.1f}" for lane in report["lanes"])
  print(f"{len(report['lanes'])} lanes at once, cores {report['lane_cpus']}: train {rates} = "
        f"{report['lanes_train_images_per_s']:.1f} img/s ({report['lanes_over_one_run']:.2f}x)")


def _gib(size: int | None) -> str:
  return "?" if size is None else f"{size / 2**30:.2f} GiB"


def print_text(report: dict[str, Any]) -> None:
  print(f"device: {report['device']}; jax {report['jax']}"
        + (f", torch {report['torch']}" if "torch" in report else "")
        + f"; {report['threads']} threads; load average {report['load_average_start']} -> "
        f"{report['load_average_end']}")
  impls = ", ".join(
      f"{layer}={report[f'{layer}_impl']}"
      + (f" ({report[f'{layer}_impl_config']})"
         if report[f"{layer}_impl_config"] != report[f"{layer}_impl"] else "")
      for layer in ("depthwise", "pointwise", "standard"))
  print(f"model: alpha={report['alpha']} {report['resolution']} px, batch {report['batch']}, "
        f"{report['dtype']}, {report['optimizer']}; {impls}")
  print(f"memory: {report['allocator']} allocator, peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB"
        + (f", GLIBC_TUNABLES={report['glibc_tunables']}" if report["glibc_tunables"] else "")
        + (f", XLA_FLAGS={report['xla_flags']}" if report["xla_flags"] else ""))
  if report.get("compiler_options"):
    print(f"compiler options: {report['compiler_options']}")
  results = report.get("variants", {report["variant"]: report})
  for variant, r in results.items():
    step = r["train_step_ms"]
    print(f"{variant:8s} jax   train {r['train_images_per_s']:8.1f} img/s  "
          f"infer {r['infer_images_per_s']:8.1f} img/s  (step median {step['median']:.1f} ms, "
          f"min {step['min']:.1f}, CPU {r['train_step_cpu_ms']:.0f} ms; compile {r['compile_s']:.1f} s train, "
          f"{r['infer_compile_s']:.1f} s infer)")
    if "torch_train_images_per_s" in r:
      print(f"{variant:8s} torch train {r['torch_train_images_per_s']:8.1f} img/s  "
            f"infer {r['torch_infer_images_per_s']:8.1f} img/s  (step CPU {r['torch_train_step_cpu_ms']:.0f} ms)")
      print(f"{variant:8s} jax/torch: train {r['jax_over_torch_train']:.2f}x  "
            f"infer {r['jax_over_torch_infer']:.2f}x")
    if "ynn_convolutions" in r:
      ynn = r["ynn_convolutions"]
      print(f"{variant:8s} jax   train {ynn['train_images_per_s']:8.1f} img/s  with YNNPACK "
            f"convolutions (jaxlib's default); without them {r['train_images_per_s'] / ynn['train_images_per_s']:.2f}x "
            f"of that  (step median {ynn['train_step_ms']['median']:.1f} ms)")
    if "memory_scheduler" in r:
      low = r["memory_scheduler"]
      print(f"{variant:8s} jax   train {low['train_images_per_s']:8.1f} img/s  with XLA's "
            f"memory-optimized scheduler: {_gib(low['train_temp_bytes'])} of temporaries "
            f"against {_gib(r['train_temp_bytes'])}; without it "
            f"{r['train_images_per_s'] / low['train_images_per_s']:.2f}x of that speed")
    impls = r.get("standard_impls", {})
    first, first_timing = next(iter(impls.items()), (None, None))
    for impl, timing in impls.items():
      print(f"{variant:8s} jax   train {timing['train_images_per_s']:8.1f} img/s  with "
            f"standard_impl={impl} ({timing['resolved']}): "
            f"{timing['train_images_per_s'] / first_timing['train_images_per_s']:.2f}x of "
            f"{first}'s  (step median {timing['train_step_ms']['median']:.1f} ms)")
  if "dws" in results and "conv" in results:
    for prefix, name in (("", "jax"), ("torch_", "torch")):
      key = f"{prefix}train_images_per_s"
      if key in results["dws"]:
        print(f"dws/conv training-step speed-up, {name}: "
              f"{results['dws'][key] / results['conv'][key]:.2f}x  (inference "
              f"{results['dws'][f'{prefix}infer_images_per_s'] / results['conv'][f'{prefix}infer_images_per_s']:.2f}x)")
  if "ops" in report:
    timings = report["ops"]
    print(f"ops at {'x'.join(map(str, report['ops_shape']))}, ms fwd / fwd+bwd:")
    for op in ("depthwise_s1", "depthwise_s2", "pointwise", "standard_s1"):
      parts = []
      for key in timings:  # in the order measured: ours, then PyTorch's
        impl = key.removeprefix(f"{op}_").removesuffix("_fwd_ms")
        if key.startswith(f"{op}_") and key.endswith("_fwd_ms"):  # not _fwd_bwd_ms
          parts.append(f"{impl} {timings[key]:.1f} / {timings[f'{op}_{impl}_fwd_bwd_ms']:.1f}")
      print(f"  {op:13s} " + "   ".join(parts))
    for row, why in report.get("ops_skipped", {}).items():
      print(f"  skipped {row}: {why}")
