#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dalle2_fast, m) {
  // One fused sampler step (math: csrc/include/dalle2_fast/sampling.h).
  // x (B, *S); model_out (B or 2B with guidance, C or 2C (learned variance), *S);
  // coefs (B, 12) float32 (float64 for float64 x); guidance, thresh (B,) like coefs;
  // noise, prev_x0 like x. kind: 0 x0, 1 DDPM, 2 DDIM, 3 DPM-Solver++(2M);
  // pred: 0 eps, 1 x0, 2 v. Inpainting (kind 1-3): known (x0 of the known region) and
  // known_noise like x, mask (B or 1, C or 1, *S), 1 = keep known; coefs columns 10, 11 scale
  // the known region to the target level. Returns (x_next like x, x0 like x or (0,) unless
  // want_x0; x0 is the model's, not blended).
  m.def(
      "sampling_step(Tensor x, Tensor model_out, Tensor coefs, Tensor? guidance, Tensor? thresh, "
      "Tensor? noise, Tensor? prev_x0, int kind, int pred, bool learned_var, bool want_x0, "
      "Tensor? known=None, Tensor? mask=None, Tensor? known_noise=None) -> (Tensor, Tensor)");
}
