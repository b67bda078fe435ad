// SPDX-License-Identifier: Apache-2.0
// hir::device_workspace: a caching allocator over device memory for the device backend's temporary storage (hir's own
// scratch buffers and Thrust's algorithm temporaries). It holds device allocations ("chunks") and hands out 256-byte
// aligned blocks carved from them (best fit); a freed block goes back to its chunk and merges with its free
// neighbours, so a call that repeats the sizes of an earlier one is served from memory already held and makes no
// device allocation. `reserve(bytes)` allocates a chunk up front; `release()` frees the chunks no block is using.
// Attach it with `hir::device.with(ws)`. Not thread-safe: one workspace per host thread, and on CUDA per stream (a
// block freed by a call on stream s may be handed to the next call at once, which is safe in s's order only).
#pragma once

#include <thrust/device_free.h>
#include <thrust/device_malloc.h>
#include <thrust/device_ptr.h>

#include <hir/config.hpp>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hir {

/// A caching allocator of device memory (Thrust's device system: CUDA global memory, or host memory under CPP/OMP).
/// Blocks are 256-byte aligned. `bytes_held()` counts usable bytes (each chunk allocates 256 bytes more, for the
/// alignment). Movable, not copyable; a tag made by `hir::device.with(ws)` refers to `ws` by
/// address, so it must not outlive (or see a move of) the workspace.
class device_workspace {
public:
  static constexpr std::size_t alignment = 256; ///< of every block (and the granularity of sizes)

  device_workspace() = default;
  /// A workspace holding one free chunk of at least `bytes` (see reserve).
  explicit device_workspace(std::size_t bytes) { reserve(bytes); }
  device_workspace(const device_workspace&) = delete;
  device_workspace& operator=(const device_workspace&) = delete;
  device_workspace(device_workspace&& o) noexcept { swap(o); }
  device_workspace& operator=(device_workspace&& o) noexcept {
    if (this != &o) {
      free_all();
      swap(o);
    }
    return *this;
  }
  /// Frees every chunk (no block may be in use: a scratch buffer never outlives the call that made it).
  ~device_workspace() {
    HIR_ASSERT(used_.empty(), "hir::device_workspace destroyed while blocks are in use");
    free_all();
  }

  /// Makes sure one free contiguous block of at least `bytes` is held, allocating a chunk of that size if none is.
  void reserve(std::size_t bytes) {
    const std::size_t need = round_up(bytes);
    if (need == 0 || largest_free() >= need)
      return;
    add_chunk(need);
  }
  /// Bytes of device memory held (the sum of the chunks, in use or free).
  std::size_t bytes_held() const noexcept { return held_; }
  /// Bytes of the blocks handed out and not yet returned.
  std::size_t bytes_in_use() const noexcept { return in_use_; }
  /// Device allocations this workspace has made since it was constructed (release() does not reset it).
  std::size_t allocations() const noexcept { return allocations_; }
  /// Frees the chunks no block is using (all of them when nothing is in use).
  void release() {
    for (std::size_t c = chunks_.size(); c-- > 0;) {
      auto it = free_.find(chunks_[c].start);
      if (it == free_.end() || it->second != chunks_[c].bytes)
        continue; // part of the chunk is in use
      free_.erase(it);
      chunk_starts_.erase(chunks_[c].start);
      held_ -= chunks_[c].bytes;
      free_chunk(chunks_[c].raw);
      chunks_.erase(chunks_.begin() + static_cast<std::ptrdiff_t>(c));
    }
  }

  /// A block of at least `bytes` (256-byte aligned; a distinct non-null pointer even for 0 bytes), from a free range
  /// held when one is large enough (the smallest such), else from a new chunk of exactly that size. Throws what
  /// Thrust's device allocation throws (thrust::system::detail::bad_alloc) when the device is out of memory.
  void* allocate(std::size_t bytes) {
    const std::size_t need = round_up(bytes == 0 ? 1 : bytes);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= need && (best == free_.end() || it->second < best->second))
        best = it;
    if (best == free_.end())
      best = add_chunk(need);
    char* p = best->first;
    const std::size_t size = best->second;
    free_.erase(best);
    if (size > need)
      free_.emplace(p + need, size - need);
    used_.emplace(p, need);
    in_use_ += need;
    return p;
  }
  /// Returns a block obtained from allocate (a null pointer is ignored).
  void deallocate(void* ptr) noexcept {
    if (!ptr)
      return;
    char* p = static_cast<char*>(ptr);
    auto u = used_.find(p);
    HIR_ASSERT(u != used_.end(), "hir::device_workspace::deallocate: not a block of this workspace");
    if (u == used_.end())
      return;
    std::size_t size = u->second;
    used_.erase(u);
    in_use_ -= size;
    // Merge with the free neighbours of the same chunk.
    auto next = free_.find(p + size);
    if (next != free_.end() && chunk_starts_.count(next->first) == 0) {
      size += next->second;
      free_.erase(next);
    }
    auto it = free_.emplace(p, size).first;
    if (it != free_.begin() && chunk_starts_.count(p) == 0) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == p) {
        prev->second += size;
        free_.erase(it);
      }
    }
  }

private:
  static std::size_t round_up(std::size_t bytes) { return (bytes + alignment - 1) / alignment * alignment; }

  std::size_t largest_free() const {
    std::size_t m = 0;
    for (const auto& f : free_)
      m = f.second > m ? f.second : m;
    return m;
  }
  /// A new chunk of `bytes` usable bytes (256-byte aligned: CUDA's allocations are, malloc's under CPP/OMP are not,
  /// so one alignment more is allocated and the start rounded up).
  std::map<char*, std::size_t>::iterator add_chunk(std::size_t bytes) {
    char* raw = static_cast<char*>(thrust::raw_pointer_cast(thrust::device_malloc(bytes + alignment)));
    const std::size_t skip = (alignment - reinterpret_cast<std::uintptr_t>(raw) % alignment) % alignment;
    char* p = raw + skip;
    ++allocations_;
    chunks_.push_back({p, bytes, raw});
    chunk_starts_.insert(p);
    held_ += bytes;
    return free_.emplace(p, bytes).first;
  }
  static void free_chunk(char* raw) { thrust::device_free(thrust::device_ptr<void>(raw)); }
  void free_all() noexcept {
    for (const auto& c : chunks_) {
      try {
        free_chunk(c.raw);
      } catch (...) { // a destructor must not throw
      }
    }
    chunks_.clear();
    chunk_starts_.clear();
    free_.clear();
    used_.clear();
    held_ = in_use_ = 0;
  }
  void swap(device_workspace& o) noexcept {
    std::swap(chunks_, o.chunks_);
    std::swap(chunk_starts_, o.chunk_starts_);
    std::swap(free_, o.free_);
    std::swap(used_, o.used_);
    std::swap(held_, o.held_);
    std::swap(in_use_, o.in_use_);
    std::swap(allocations_, o.allocations_);
  }

  struct chunk {
    char* start;       ///< first aligned byte
    std::size_t bytes; ///< usable bytes from start
    char* raw;         ///< what the device allocation returned (freed)
  };
  std::vector<chunk> chunks_;                   ///< device allocations
  std::set<char*> chunk_starts_;                ///< free ranges never merge across these
  std::map<char*, std::size_t> free_;           ///< free ranges by address
  std::unordered_map<char*, std::size_t> used_; ///< blocks handed out (start, bytes)
  std::size_t held_ = 0, in_use_ = 0, allocations_ = 0;
};

} // namespace hir
