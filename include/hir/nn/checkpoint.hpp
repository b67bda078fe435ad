// SPDX-License-Identifier: Apache-2.0
// Checkpoints of the reference transformer: parameters, AdamW moments and step, the trainer's step and RNG position,
// and any number of named extra blobs, in a versioned little-endian binary file with a magic number, the config and a
// trailing FNV-1a 64 checksum. Saving is atomic (write "<path>.tmp", flush, fsync, rename over <path>), so a crash
// leaves the previous checkpoint intact; loading reads and verifies the whole file before writing anything, and a
// truncated or corrupted file or a config mismatch throws hir::nn::checkpoint_error naming the problem.
//
// Format version 1 (all integers little-endian):
//   "HIRNNCKP" | u32 version | u32 scalar bytes (4 float, 8 double) | u64 vocab, context, channels, layers, heads |
//   u64 step, rng_seed, rng_counter, adamw_step | u64 parameter elements (parameter_layout::total) | u32 sections |
//   sections: u32 name bytes, name, u64 payload bytes, payload | u64 FNV-1a 64 of every byte before it.
// Sections "params", "adamw.m", "adamw.v" (parameter_layout order, padding included) come first; extra blobs follow
// under their own names (the "hir." and "adamw."/"params" names are reserved).
#pragma once

#include <hir/core/span.hpp>
#include <hir/nn/adamw.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/model.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#  include <unistd.h>
#endif

namespace hir::nn {

/// A checkpoint file cannot be written, read or used (I/O error, bad magic or version, truncation, checksum
/// mismatch, config or size mismatch). The message starts with "hir::nn::<function>: <path>: ".
class checkpoint_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A named byte blob stored alongside the tensors (e.g. a trainer's counters).
struct checkpoint_blob {
  std::string name;
  std::vector<unsigned char> data;
};

/// Everything in a checkpoint besides the tensors.
struct checkpoint_state {
  std::uint64_t step = 0;        ///< the trainer's step
  std::uint64_t rng_seed = 0;    ///< the trainer's philox seed
  std::uint64_t rng_counter = 0; ///< the trainer's position in its random streams (e.g. next sequence id)
  std::uint64_t adamw_step = 0;  ///< AdamW's update count (restored into adamw_state by load_checkpoint)
  std::vector<checkpoint_blob> blobs;

  /// The blob called `name`, or nullptr.
  const checkpoint_blob* find(const std::string& name) const {
    for (const auto& b : blobs)
      if (b.name == name)
        return &b;
    return nullptr;
  }
};

/// The file format's version written by this header.
inline constexpr std::uint32_t checkpoint_version = 1;

namespace detail {

inline constexpr char checkpoint_magic[8] = {'H', 'I', 'R', 'N', 'N', 'C', 'K', 'P'};

template <class... Parts>
[[noreturn]] void checkpoint_fail(const char* fn, const std::string& path, Parts&&... parts) {
  throw checkpoint_error(hir::detail::message(fn, path, ": ", std::forward<Parts>(parts)...));
}

inline std::uint64_t fnv1a(std::uint64_t h, const unsigned char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}
inline constexpr std::uint64_t fnv_offset = 0xcbf29ce484222325ull;

// Streams bytes to a FILE, hashing them on the way.
struct checkpoint_writer {
  std::FILE* f;
  std::uint64_t hash = fnv_offset;
  bool ok = true;
  void bytes(const void* p, std::size_t n) {
    if (n == 0) // an empty section or blob: p may be null, which fwrite must not be given
      return;
    hash = fnv1a(hash, static_cast<const unsigned char*>(p), n);
    ok = ok && std::fwrite(p, 1, n, f) == n;
  }
  template <class U>
  void le(U v) { // little-endian integer
    unsigned char b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i)
      b[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(v) >> (8 * i));
    bytes(b, sizeof(U));
  }
  void section(const std::string& name, const void* p, std::size_t n) {
    le(static_cast<std::uint32_t>(name.size()));
    bytes(name.data(), name.size());
    le(static_cast<std::uint64_t>(n));
    bytes(p, n);
  }
};

// Bounds-checked reader over the file's bytes.
struct checkpoint_reader {
  const std::vector<unsigned char>& buf;
  std::size_t pos;
  const char* fn;
  const std::string& path;
  const unsigned char* take(std::size_t n, const char* what) {
    if (n > buf.size() - pos)
      checkpoint_fail(fn, path, "truncated: ", what, " needs ", n, " bytes at offset ", pos, " but the file has ",
                      buf.size() - pos, " left");
    const unsigned char* p = buf.data() + pos;
    pos += n;
    return p;
  }
  template <class U>
  U le(const char* what) {
    const unsigned char* p = take(sizeof(U), what);
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i)
      v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    return static_cast<U>(v);
  }
};

struct parsed_section {
  std::string name;
  std::size_t offset = 0, bytes = 0;
};

struct parsed_checkpoint {
  std::uint32_t scalar_bytes = 0;
  transformer_config config;
  checkpoint_state state;
  std::uint64_t elements = 0;
  std::vector<parsed_section> sections;
};

inline std::vector<unsigned char> read_file(const char* fn, const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f)
    checkpoint_fail(fn, path, "cannot open for reading");
  std::vector<unsigned char> buf;
  unsigned char chunk[65536];
  std::size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0)
    buf.insert(buf.end(), chunk, chunk + n);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err)
    checkpoint_fail(fn, path, "read error");
  return buf;
}

// Parses and verifies the whole file (magic, version, structure, checksum); writes nothing outside the result.
inline parsed_checkpoint parse_checkpoint(const char* fn, const std::string& path,
                                          const std::vector<unsigned char>& buf) {
  checkpoint_reader r{buf, 0, fn, path};
  if (std::memcmp(r.take(8, "the magic number"), checkpoint_magic, 8) != 0)
    checkpoint_fail(fn, path, "not a hir::nn checkpoint (bad magic number)");
  parsed_checkpoint c;
  const auto version = r.le<std::uint32_t>("the version");
  if (version != checkpoint_version)
    checkpoint_fail(fn, path, "format version ", version, " is not supported (this build reads version ",
                    checkpoint_version, ")");
  c.scalar_bytes = r.le<std::uint32_t>("the scalar size");
  c.config.vocab = r.le<std::uint64_t>("the config");
  c.config.context = r.le<std::uint64_t>("the config");
  c.config.channels = r.le<std::uint64_t>("the config");
  c.config.layers = r.le<std::uint64_t>("the config");
  c.config.heads = r.le<std::uint64_t>("the config");
  c.state.step = r.le<std::uint64_t>("the step");
  c.state.rng_seed = r.le<std::uint64_t>("the rng seed");
  c.state.rng_counter = r.le<std::uint64_t>("the rng counter");
  c.state.adamw_step = r.le<std::uint64_t>("the adamw step");
  c.elements = r.le<std::uint64_t>("the parameter count");
  const auto n_sections = r.le<std::uint32_t>("the section count");
  for (std::uint32_t i = 0; i < n_sections; ++i) {
    parsed_section s;
    const auto name_len = r.le<std::uint32_t>("a section name length");
    const unsigned char* name = r.take(name_len, "a section name");
    s.name.assign(reinterpret_cast<const char*>(name), name_len);
    s.bytes = static_cast<std::size_t>(r.le<std::uint64_t>("a section size"));
    s.offset = r.pos;
    r.take(s.bytes, ("section \"" + s.name + "\"").c_str());
    c.sections.push_back(std::move(s));
  }
  const std::size_t body = r.pos;
  const auto stored = r.le<std::uint64_t>("the checksum");
  if (r.pos != buf.size())
    checkpoint_fail(fn, path, buf.size() - r.pos, " unexpected bytes after the checksum");
  if (fnv1a(fnv_offset, buf.data(), body) != stored)
    checkpoint_fail(fn, path, "checksum mismatch: the file is corrupted");
  return c;
}

} // namespace detail

/// Writes a checkpoint atomically: to "<path>.tmp", flushed and fsync'ed, then renamed over `path`.
/// \param params, m, v (layout.total each) \param state trainer step, RNG position, AdamW step and extra blobs.
/// \throws hir::invalid_argument on sizes or a reserved/duplicate blob name; checkpoint_error on I/O failure
/// (the previous file at `path` is then untouched).
template <class T>
void save_checkpoint(const std::string& path, const parameter_layout& layout, span<const T> params, span<const T> m,
                     span<const T> v, const checkpoint_state& state) {
  const char* fn = "nn::save_checkpoint";
  hir::detail::check_size(fn, "params.size()", params.size(), "layout.total", layout.total);
  hir::detail::check_size(fn, "m.size()", m.size(), "layout.total", layout.total);
  hir::detail::check_size(fn, "v.size()", v.size(), "layout.total", layout.total);
  for (std::size_t i = 0; i < state.blobs.size(); ++i) {
    const std::string& n = state.blobs[i].name;
    if (n == "params" || n.rfind("adamw.", 0) == 0 || n.rfind("hir.", 0) == 0)
      hir::detail::fail(fn, "blob name \"", n, "\" is reserved");
    for (std::size_t j = 0; j < i; ++j)
      if (state.blobs[j].name == n)
        hir::detail::fail(fn, "blob name \"", n, "\" is used twice");
  }
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    detail::checkpoint_fail(fn, tmp, "cannot open for writing");
  detail::checkpoint_writer w{f};
  const transformer_config& c = layout.config;
  w.bytes(detail::checkpoint_magic, 8);
  w.le(checkpoint_version);
  w.le(static_cast<std::uint32_t>(sizeof(T)));
  for (std::size_t x : {c.vocab, c.context, c.channels, c.layers, c.heads})
    w.le(static_cast<std::uint64_t>(x));
  w.le(state.step);
  w.le(state.rng_seed);
  w.le(state.rng_counter);
  w.le(state.adamw_step);
  w.le(static_cast<std::uint64_t>(layout.total));
  w.le(static_cast<std::uint32_t>(3 + state.blobs.size()));
  w.section("params", params.data(), params.size() * sizeof(T));
  w.section("adamw.m", m.data(), m.size() * sizeof(T));
  w.section("adamw.v", v.data(), v.size() * sizeof(T));
  for (const auto& b : state.blobs)
    w.section(b.name, b.data.data(), b.data.size());
  const std::uint64_t h = w.hash;
  w.le(h);
  bool ok = w.ok && std::fflush(f) == 0;
#if defined(__unix__) || defined(__APPLE__)
  ok = ok && ::fsync(::fileno(f)) == 0;
#endif
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    detail::checkpoint_fail(fn, tmp, "write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    detail::checkpoint_fail(fn, path, "cannot rename ", tmp, " over it");
  }
}

/// Reads the config stored in a checkpoint (verifying the whole file). \throws checkpoint_error.
inline transformer_config read_checkpoint_config(const std::string& path) {
  const auto buf = detail::read_file("nn::read_checkpoint_config", path);
  return detail::parse_checkpoint("nn::read_checkpoint_config", path, buf).config;
}

/// Loads a checkpoint written by save_checkpoint for `layout`'s config and scalar type T into params, m, v and
/// returns the rest. Nothing is written unless the whole file verifies. \throws checkpoint_error on I/O errors,
/// bad magic or version, truncation, checksum mismatch, a different config or scalar type; hir::invalid_argument on
/// span sizes.
template <class T>
checkpoint_state load_checkpoint(const std::string& path, const parameter_layout& layout, span<T> params, span<T> m,
                                 span<T> v) {
  const char* fn = "nn::load_checkpoint";
  hir::detail::check_size(fn, "params.size()", params.size(), "layout.total", layout.total);
  hir::detail::check_size(fn, "m.size()", m.size(), "layout.total", layout.total);
  hir::detail::check_size(fn, "v.size()", v.size(), "layout.total", layout.total);
  const auto buf = detail::read_file(fn, path);
  detail::parsed_checkpoint c = detail::parse_checkpoint(fn, path, buf);
  const transformer_config& e = layout.config;
  if (c.config != e)
    detail::checkpoint_fail(fn, path, "config mismatch: the file has vocab ", c.config.vocab, ", context ",
                            c.config.context, ", channels ", c.config.channels, ", layers ", c.config.layers,
                            ", heads ", c.config.heads, "; expected vocab ", e.vocab, ", context ", e.context,
                            ", channels ", e.channels, ", layers ", e.layers, ", heads ", e.heads);
  if (c.scalar_bytes != sizeof(T))
    detail::checkpoint_fail(fn, path, "scalar size mismatch: the file stores ", c.scalar_bytes,
                            "-byte scalars, expected ", sizeof(T));
  if (c.elements != layout.total)
    detail::checkpoint_fail(fn, path, "parameter buffer of ", c.elements, " elements, expected ", layout.total);
  const char* required[3] = {"params", "adamw.m", "adamw.v"};
  for (std::size_t i = 0; i < 3; ++i)
    if (c.sections.size() <= i || c.sections[i].name != required[i] || c.sections[i].bytes != layout.total * sizeof(T))
      detail::checkpoint_fail(fn, path, "section ", i, " must be \"", required[i], "\" of ", layout.total * sizeof(T),
                              " bytes");
  span<T> dst[3] = {params, m, v};
  for (std::size_t i = 0; i < 3; ++i)
    std::memcpy(dst[i].data(), buf.data() + c.sections[i].offset, c.sections[i].bytes);
  for (std::size_t i = 3; i < c.sections.size(); ++i) {
    const auto* p = buf.data() + c.sections[i].offset;
    c.state.blobs.push_back({c.sections[i].name, std::vector<unsigned char>(p, p + c.sections[i].bytes)});
  }
  return c.state;
}

/// Saves model m's parameters and optimizer opt's moments and step (state.adamw_step is taken from opt).
template <class T>
void save_checkpoint(const std::string& path, const model<T>& m, const adamw_state<T>& opt, checkpoint_state state) {
  state.adamw_step = opt.step();
  save_checkpoint<T>(path, m.params_layout(), m.parameters(), opt.m(), opt.v(), state);
}

/// Loads into model m and optimizer opt (moments and step); returns the rest of the state.
template <class T>
checkpoint_state load_checkpoint(const std::string& path, model<T>& m, adamw_state<T>& opt) {
  if (opt.layout().config != m.config())
    hir::detail::fail("nn::load_checkpoint", "the optimizer's config does not match the model's");
  checkpoint_state s = load_checkpoint<T>(path, m.params_layout(), m.parameters(), opt.m(), opt.v());
  opt.set_step(s.adamw_step);
  return s;
}

} // namespace hir::nn
