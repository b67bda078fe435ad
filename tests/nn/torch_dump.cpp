// SPDX-License-Identifier: Apache-2.0
// Writes one PyTorch comparison case for tests/nn/torch_compare.py: a small GPT's weights and inputs and, computed
// by hir::nn in float, the logits, log-probs, entropies, masked cross-entropy and its parameter gradients, the
// parameter gradients of a given dL/dlogp and dL/dentropy (the policy-gradient entry point), and the losses of 10
// AdamW steps (grad-norm clipping, warm-up + cosine schedule). Format: records of u32 name length, name, u32 dtype
// (0 float32, 1 int32), u64 count, data (little-endian).
#include <hir/nn.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

struct writer {
  std::FILE* f;
  template <class T>
  void put(const std::string& name, const T* data, std::size_t n) {
    const std::uint32_t len = static_cast<std::uint32_t>(name.size());
    const std::uint32_t dtype = std::is_same_v<T, float> ? 0u : 1u;
    const std::uint64_t count = n;
    std::fwrite(&len, 4, 1, f);
    std::fwrite(name.data(), 1, name.size(), f);
    std::fwrite(&dtype, 4, 1, f);
    std::fwrite(&count, 8, 1, f);
    std::fwrite(data, sizeof(T), n, f);
  }
  template <class T>
  void put(const std::string& name, const std::vector<T>& v) {
    put(name, v.data(), v.size());
  }
  void put_tensors(const std::string& prefix, const hir::nn::parameter_layout& pl, hir::span<const float> buf) {
    for (const auto& t : pl.tensors)
      put(prefix + t.name, buf.data() + t.offset, t.size);
  }
};

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <output file>\n", argv[0]);
    return 2;
  }
  hir::nn::transformer_config c;
  c.vocab = 37;
  c.context = 16;
  c.channels = 32;
  c.layers = 2;
  c.heads = 4;
  const std::size_t B = 3, T = 11, BT = B * T;
  hir::nn::model<float> m(c, B, T);
  m.init_parameters(20240611, 0.1);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> noise(0.f, 0.1f);
  for (auto& x : m.parameters()) // perturb biases and LayerNorm parameters too, so every gradient is exercised
    x += noise(rng);
  std::uniform_int_distribution<int> tok_d(0, static_cast<int>(c.vocab) - 1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<hir::nn::token_t> tokens(BT), targets(BT);
  std::vector<float> mask(BT), dlogp(BT), dentropy(BT), scratch(BT);
  for (std::size_t i = 0; i < BT; ++i) {
    tokens[i] = tok_d(rng);
    targets[i] = (i % 7 == 3) ? -1 : tok_d(rng);
    mask[i] = (targets[i] < 0 || i % 5 == 1) ? 0.f : 1.f;
    dlogp[i] = u(rng);
    dentropy[i] = 0.1f * u(rng);
  }
  std::FILE* f = std::fopen(argv[1], "wb");
  if (!f) {
    std::perror(argv[1]);
    return 1;
  }
  writer w{f};
  const std::vector<std::int32_t> config = {static_cast<std::int32_t>(c.vocab),    static_cast<std::int32_t>(c.context),
                                            static_cast<std::int32_t>(c.channels), static_cast<std::int32_t>(c.layers),
                                            static_cast<std::int32_t>(c.heads),    static_cast<std::int32_t>(B),
                                            static_cast<std::int32_t>(T)};
  w.put("config", config);
  w.put_tensors("param.", m.params_layout(), m.parameters());
  w.put("tokens", tokens);
  w.put("targets", targets);
  w.put("mask", mask);
  w.put("dlogp", dlogp);
  w.put("dentropy", dentropy);

  // Supervised entry point.
  m.forward(tokens, targets, B, T);
  w.put("logits", m.logits().data(), m.logits().size());
  w.put("logp", m.logp().data(), BT);
  w.put("entropy", m.entropy().data(), BT);
  m.zero_grad();
  const float loss = m.backward_cross_entropy(mask, hir::view(scratch));
  w.put("ce_loss", &loss, 1);
  w.put_tensors("grad_ce.", m.params_layout(), m.gradients());

  // Policy-gradient entry point: dL/dlogp and dL/dentropy given.
  m.zero_grad();
  m.forward(tokens, targets, B, T);
  m.backward(dlogp, dentropy);
  w.put_tensors("grad_pg.", m.params_layout(), m.gradients());

  // 10 AdamW steps on the cross-entropy.
  hir::nn::adamw_options opt;
  opt.weight_decay = 0.1;
  hir::nn::lr_schedule sched;
  sched.kind = hir::nn::lr_schedule::cosine;
  sched.lr = 1e-2;
  sched.min_lr = 1e-3;
  sched.warmup_steps = 3;
  sched.total_steps = 10;
  hir::nn::adamw_state<float> state(m.params_layout());
  std::vector<float> losses, norms;
  for (int step = 0; step < 10; ++step) {
    m.zero_grad();
    m.forward(tokens, targets, B, T);
    losses.push_back(m.backward_cross_entropy(mask, hir::view(scratch)));
    norms.push_back(static_cast<float>(hir::nn::clip_grad_norm(hir::cpu, m.gradients(), 1.0)));
    state.update(hir::cpu, m.parameters(), m.gradients(), opt, sched.at(state.step()));
  }
  w.put("adamw_losses", losses);
  w.put("adamw_grad_norms", norms);
  w.put_tensors("final.", m.params_layout(), m.parameters());
  const bool ok = std::fclose(f) == 0;
  std::printf("wrote %s (loss %.6f, 10-step losses %.6f .. %.6f)\n", argv[1], static_cast<double>(loss),
              static_cast<double>(losses.front()), static_cast<double>(losses.back()));
  return ok ? 0 : 1;
}
