// Depthwise 3x3 convolution of NHWC float32 images for XLA:CPU, as two XLA FFI handlers:
//
//   mobilenet_depthwise3x3_forward(x[N,H,W,C], kernel[3,3,1,C]) -> y[N,OH,OW,C]
//   mobilenet_depthwise3x3_backward(x, kernel, dy[N,OH,OW,C])
//       -> dx[N,H,W,C], dkernel_per_image[N,3,3,1,C]
//
// with int64 attributes stride_h, stride_w, pad_top, pad_left (the pads lax computes for
// 'SAME', 'VALID' or explicit non-negative pads; the bottom and right pads follow from the
// shapes). The kernel gradient is returned per image so that a batch-sharded call needs
// nothing from other devices; the caller sums it over the batch.
//
// Every loop over pixels gathers the taps that fall inside the image, then runs one loop over
// the contiguous channels that gcc vectorises (the tap count is a template parameter, so the
// tap loop unrolls). Work is split into fixed row ranges, so results do not depend on how many
// threads the intra-op pool has or how it schedules them.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kTaps = 9;

struct Geometry {
  int64_t batch, in_h, in_w, out_h, out_w, channels;
  int64_t stride_h, stride_w, pad_top, pad_left;

  int64_t InPixel(int64_t n, int64_t h, int64_t w) const {
    return ((n * in_h + h) * in_w + w) * channels;
  }
  int64_t OutPixel(int64_t n, int64_t h, int64_t w) const {
    return ((n * out_h + h) * out_w + w) * channels;
  }
};

// Runs body(item) for every item in [0, count), on the intra-op pool and the calling thread.
// Items are claimed from a shared counter; a task that starts after all items are claimed
// returns without touching `body`, so the caller only waits for items in progress.
void ParallelFor(ffi::ThreadPool& pool, int64_t count,
                 const std::function<void(int64_t)>& body) {
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  const std::function<void(int64_t)>* body_ptr = &body;
  auto drain = [progress, body_ptr, count] {
    for (int64_t item; (item = progress->next.fetch_add(1)) < count;) {
      (*body_ptr)(item);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule(decltype(drain)(drain));
  drain();
  while (progress->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// Calls body(std::integral_constant<int, taps>()), so that each tap count gets a loop of its own.
template <typename Body>
void WithTapCount(int taps, Body&& body) {
  switch (taps) {
    case 0: return body(std::integral_constant<int, 0>());
    case 1: return body(std::integral_constant<int, 1>());
    case 2: return body(std::integral_constant<int, 2>());
    case 3: return body(std::integral_constant<int, 3>());
    case 4: return body(std::integral_constant<int, 4>());
    case 5: return body(std::integral_constant<int, 5>());
    case 6: return body(std::integral_constant<int, 6>());
    case 7: return body(std::integral_constant<int, 7>());
    case 8: return body(std::integral_constant<int, 8>());
    default: return body(std::integral_constant<int, kTaps>());
  }
}

// Calls visit(t, i * 3 + j, h, w) for the taps (i, j) of output pixel (oh, ow) whose input
// pixel (h, w) lies inside the image, t counting them from 0; returns how many there were.
template <typename Visit>
int ForEachTapInImage(const Geometry& g, int64_t oh, int64_t ow, Visit&& visit) {
  int taps = 0;
  for (int i = 0; i < 3; ++i) {
    const int64_t h = oh * g.stride_h - g.pad_top + i;
    if (h < 0 || h >= g.in_h) continue;
    for (int j = 0; j < 3; ++j) {
      const int64_t w = ow * g.stride_w - g.pad_left + j;
      if (w < 0 || w >= g.in_w) continue;
      visit(taps++, i * 3 + j, h, w);
    }
  }
  return taps;
}

// The first T row pointers, copied into a fixed-size local array that the compiler keeps in
// registers across the channel loop.
template <int T, typename Pointer>
std::array<Pointer, T> FirstTaps(const Pointer* rows) {
  std::array<Pointer, T> first;
  for (int t = 0; t < T; ++t) first[t] = rows[t];
  return first;
}

// out[c] = sum_t a[t][c] * b[t][c].
template <int T>
void SumOfProducts(const float* const* a, const float* const* b, float* __restrict out,
                   int64_t channels) {
  if constexpr (T == 0) {
    std::memset(out, 0, channels * sizeof(float));
  } else {
    const auto ap = FirstTaps<T>(a);
    const auto bp = FirstTaps<T>(b);
#pragma GCC ivdep
    for (int64_t c = 0; c < channels; ++c) {
      float sum = ap[0][c] * bp[0][c];
      for (int t = 1; t < T; ++t) sum += ap[t][c] * bp[t][c];
      out[c] = sum;
    }
  }
}

void SumOfProducts(int taps, const float* const* a, const float* const* b, float* out,
                   int64_t channels) {
  WithTapCount(taps, [&](auto count) {
    SumOfProducts<decltype(count)::value>(a, b, out, channels);
  });
}

// acc[t][c] += a[t][c] * d[c].
template <int T>
void AccumulateProducts(float* const* acc, const float* const* a, const float* __restrict d,
                        int64_t channels) {
  if constexpr (T > 0) {
    const auto accp = FirstTaps<T>(acc);
    const auto ap = FirstTaps<T>(a);
#pragma GCC ivdep
    for (int64_t c = 0; c < channels; ++c) {
      const float dc = d[c];
      for (int t = 0; t < T; ++t) accp[t][c] += ap[t][c] * dc;
    }
  }
}

void AccumulateProducts(int taps, float* const* acc, const float* const* a, const float* d,
                        int64_t channels) {
  WithTapCount(taps, [&](auto count) {
    AccumulateProducts<decltype(count)::value>(acc, a, d, channels);
  });
}

// y[n, oh, :, :]: each output pixel sums the input pixels under the taps inside the image.
void ForwardRow(const Geometry& g, const float* x, const float* kernel, float* y, int64_t n,
                int64_t oh) {
  const float* inputs[kTaps];
  const float* weights[kTaps];
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    const int taps = ForEachTapInImage(g, oh, ow, [&](int t, int tap, int64_t h, int64_t w) {
      inputs[t] = x + g.InPixel(n, h, w);
      weights[t] = kernel + tap * g.channels;
    });
    SumOfProducts(taps, inputs, weights, y + g.OutPixel(n, oh, ow), g.channels);
  }
}

// dx[n, h, :, :]: input pixel (h, w) gathers dy[oh, ow] * kernel[i, j] over every tap with
// oh * stride - pad + i = h (likewise for w) inside the output.
void InputGradRow(const Geometry& g, const float* dy, const float* kernel, float* dx, int64_t n,
                  int64_t h) {
  const float* grads[kTaps];
  const float* weights[kTaps];
  for (int64_t w = 0; w < g.in_w; ++w) {
    int taps = 0;
    for (int i = 0; i < 3; ++i) {
      const int64_t row = h + g.pad_top - i;
      if (row < 0 || row % g.stride_h != 0 || row / g.stride_h >= g.out_h) continue;
      for (int j = 0; j < 3; ++j) {
        const int64_t col = w + g.pad_left - j;
        if (col < 0 || col % g.stride_w != 0 || col / g.stride_w >= g.out_w) continue;
        grads[taps] = dy + g.OutPixel(n, row / g.stride_h, col / g.stride_w);
        weights[taps] = kernel + (i * 3 + j) * g.channels;
        ++taps;
      }
    }
    SumOfProducts(taps, grads, weights, dx + g.InPixel(n, h, w), g.channels);
  }
}

// dkernel[i, j, :] += x[tap (i, j) of output pixel] * dy[output pixel], over row oh.
void KernelGradRow(const Geometry& g, const float* x, const float* dy, float* dkernel, int64_t n,
                   int64_t oh) {
  float* sums[kTaps];
  const float* inputs[kTaps];
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    const int taps = ForEachTapInImage(g, oh, ow, [&](int t, int tap, int64_t h, int64_t w) {
      sums[t] = dkernel + tap * g.channels;
      inputs[t] = x + g.InPixel(n, h, w);
    });
    AccumulateProducts(taps, sums, inputs, dy + g.OutPixel(n, oh, ow), g.channels);
  }
}

// Enough work items for a few threads at any batch size, fixed by the shapes alone.
constexpr int64_t kMinWorkItems = 16;

int64_t RowsPerItem(int64_t rows) {
  return std::max<int64_t>(1, rows / (4 * kMinWorkItems));
}

int64_t BandsPerImage(const Geometry& g) {
  const int64_t wanted = (kMinWorkItems + g.batch - 1) / g.batch;
  return std::max<int64_t>(1, std::min(wanted, std::min(g.in_h, g.out_h)));
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& kernel,
                       ffi::AnyBuffer::Dimensions out_dims, int64_t stride_h, int64_t stride_w,
                       int64_t pad_top, int64_t pad_left, Geometry* g) {
  const auto xd = x.dimensions();
  const auto kd = kernel.dimensions();
  if (xd.size() != 4 || kd.size() != 4 || out_dims.size() != 4) {
    return ffi::Error::InvalidArgument("depthwise3x3: x, kernel and y must have rank 4");
  }
  if (kd[0] != 3 || kd[1] != 3 || kd[2] != 1 || kd[3] != xd[3]) {
    return ffi::Error::InvalidArgument("depthwise3x3: kernel must be (3, 3, 1, C)");
  }
  if (out_dims[0] != xd[0] || out_dims[3] != xd[3]) {
    return ffi::Error::InvalidArgument("depthwise3x3: y must be (N, OH, OW, C)");
  }
  if (stride_h < 1 || stride_w < 1 || pad_top < 0 || pad_left < 0 || pad_top > 2 ||
      pad_left > 2) {
    return ffi::Error::InvalidArgument("depthwise3x3: strides >= 1 and pads in [0, 2] only");
  }
  *g = Geometry{xd[0], xd[1], xd[2], out_dims[1], out_dims[2], xd[3],
                stride_h, stride_w, pad_top, pad_left};
  if ((g->out_h - 1) * stride_h + 3 > g->in_h + pad_top + 2 ||
      (g->out_w - 1) * stride_w + 3 > g->in_w + pad_left + 2) {
    return ffi::Error::InvalidArgument("depthwise3x3: output larger than the padded input");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride_h, int64_t stride_w,
                   int64_t pad_top, int64_t pad_left) {
  Geometry g;
  ffi::Error error = CheckShapes(x, kernel, y->dimensions(), stride_h, stride_w, pad_top,
                                 pad_left, &g);
  if (error.failure()) return error;
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = g.batch * g.out_h;
  const int64_t rows_per_item = RowsPerItem(rows);
  ParallelFor(pool, (rows + rows_per_item - 1) / rows_per_item, [&](int64_t item) {
    const int64_t end = std::min(rows, (item + 1) * rows_per_item);
    for (int64_t row = item * rows_per_item; row < end; ++row) {
      ForwardRow(g, xp, kp, yp, row / g.out_h, row % g.out_h);
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                    ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dx,
                    ffi::ResultBuffer<ffi::F32> dkernel_per_image, int64_t stride_h,
                    int64_t stride_w, int64_t pad_top, int64_t pad_left) {
  Geometry g;
  ffi::Error error = CheckShapes(x, kernel, dy.dimensions(), stride_h, stride_w, pad_top,
                                 pad_left, &g);
  if (error.failure()) return error;
  const auto dkd = dkernel_per_image->dimensions();
  if (dkd.size() != 5 || dkd[0] != g.batch || dkd[1] != 3 || dkd[2] != 3 || dkd[3] != 1 ||
      dkd[4] != g.channels) {
    return ffi::Error::InvalidArgument("depthwise3x3: dkernel must be (N, 3, 3, 1, C)");
  }
  const float* xp = x.typed_data();
  const float* kp = kernel.typed_data();
  const float* dyp = dy.typed_data();
  float* dxp = dx->typed_data();
  float* dkp = dkernel_per_image->typed_data();
  const int64_t kernel_size = kTaps * g.channels;
  // Each image is cut into the same bands of input rows (for dx) and output rows (for the
  // kernel gradient, summed per band, then over the bands in order).
  const int64_t bands = BandsPerImage(g);
  std::vector<float> band_sums(g.batch * bands * kernel_size, 0.0f);
  ParallelFor(pool, g.batch * bands, [&](int64_t item) {
    const int64_t n = item / bands, band = item % bands;
    for (int64_t h = band * g.in_h / bands; h < (band + 1) * g.in_h / bands; ++h) {
      InputGradRow(g, dyp, kp, dxp, n, h);
    }
    float* sums = band_sums.data() + item * kernel_size;
    for (int64_t oh = band * g.out_h / bands; oh < (band + 1) * g.out_h / bands; ++oh) {
      KernelGradRow(g, xp, dyp, sums, n, oh);
    }
  });
  for (int64_t n = 0; n < g.batch; ++n) {
    float* out = dkp + n * kernel_size;
    std::memcpy(out, band_sums.data() + n * bands * kernel_size, kernel_size * sizeof(float));
    for (int64_t band = 1; band < bands; ++band) {
      const float* sums = band_sums.data() + (n * bands + band) * kernel_size;
      for (int64_t k = 0; k < kernel_size; ++k) out[k] += sums[k];
    }
  }
  return ffi::Error::Success();
}

// The attributes both handlers take after their buffers.
template <typename Binding>
auto WithGeometry(Binding&& binding) {
  return std::forward<Binding>(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_left");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(mobilenet_depthwise3x3_forward, Forward,
                              WithGeometry(ffi::Ffi::Bind()
                                               .Ctx<ffi::ThreadPool>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Ret<ffi::Buffer<ffi::F32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(mobilenet_depthwise3x3_backward, Backward,
                              WithGeometry(ffi::Ffi::Bind()
                                               .Ctx<ffi::ThreadPool>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Arg<ffi::Buffer<ffi::F32>>()
                                               .Ret<ffi::Buffer<ffi::F32>>()
                                               .Ret<ffi::Buffer<ffi::F32>>()));
