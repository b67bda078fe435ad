// SPDX-License-Identifier: Apache-2.0
// Ragged group layouts. A group is the set of responses sampled for one prompt; groups may have any sizes and
// their members may appear in any order in the batch (group ids), not only as a fixed reshape.
//
//   group_layout          host description, owning; built from a uniform size, sizes, offsets or group ids
//   group_ref<Space>      non-owning view in one memory space; what algorithms take
//   group_storage<B>      a copy of a layout in backend B's memory (for hir::device)
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace hir {

/// A view of a group layout. Group g holds the member slots [begin(g), end(g)); slot k is sample `sample(k)`.
/// With `uniform_size > 0` group g is samples [g·uniform_size, (g+1)·uniform_size) and no arrays are read.
template <class Space = host_space>
struct group_ref {
  std::size_t num_groups = 0;
  std::size_t num_samples = 0;
  std::size_t uniform_size = 0;            ///< > 0: every group has this size and members are contiguous
  span<const std::int64_t, Space> offsets; ///< num_groups + 1 slot offsets (unused when uniform_size > 0)
  span<const std::int64_t, Space> members; ///< sample index of each slot; empty = identity (contiguous groups)

  HIR_HOST_DEVICE std::size_t begin(std::size_t g) const {
    return uniform_size ? g * uniform_size : static_cast<std::size_t>(offsets[g]);
  }
  HIR_HOST_DEVICE std::size_t end(std::size_t g) const {
    return uniform_size ? (g + 1) * uniform_size : static_cast<std::size_t>(offsets[g + 1]);
  }
  HIR_HOST_DEVICE std::size_t size(std::size_t g) const { return end(g) - begin(g); }
  HIR_HOST_DEVICE std::size_t sample(std::size_t slot) const {
    return members.empty() ? slot : static_cast<std::size_t>(members[slot]);
  }
  HIR_HOST_DEVICE bool contiguous() const { return members.empty(); }
};

/// How groups of a batch are laid out, on the host. Build it once per batch with one of the factories; every
/// factory validates its input and throws hir::invalid_argument naming the function and the values.
class group_layout {
public:
  group_layout() = default;

  /// `num_samples / group_size` groups of `group_size` consecutive samples (the verl/TRL/OpenRLHF reshape).
  static group_layout uniform(std::size_t num_samples, std::size_t group_size) {
    if (group_size == 0)
      detail::fail("group_layout::uniform", "group_size = 0");
    if (num_samples % group_size != 0)
      detail::fail("group_layout::uniform", "num_samples = ", num_samples,
                   " is not a multiple of group_size = ", group_size);
    group_layout l;
    l.num_samples_ = num_samples;
    l.num_groups_ = num_samples / group_size;
    l.uniform_size_ = group_size;
    return l;
  }

  /// Consecutive groups with the given sizes (each ≥ 1).
  static group_layout from_sizes(span<const std::int64_t> sizes) {
    group_layout l;
    l.offsets_.resize(sizes.size() + 1);
    l.offsets_[0] = 0;
    for (std::size_t g = 0; g < sizes.size(); ++g) {
      if (sizes[g] < 1)
        detail::fail("group_layout::from_sizes", "sizes[", g, "] = ", sizes[g], " (every group needs a sample)");
      l.offsets_[g + 1] = l.offsets_[g] + sizes[g];
    }
    l.num_groups_ = sizes.size();
    l.num_samples_ = static_cast<std::size_t>(l.offsets_.back());
    return l;
  }

  /// Consecutive groups given by offsets: group g is samples [offsets[g], offsets[g+1]). offsets[0] must be 0 and
  /// offsets strictly increasing (no empty group).
  static group_layout from_offsets(span<const std::int64_t> offsets) {
    if (offsets.empty() || offsets[0] != 0)
      detail::fail("group_layout::from_offsets", "offsets must start with 0 (size = ", offsets.size(), ")");
    for (std::size_t g = 0; g + 1 < offsets.size(); ++g)
      if (offsets[g + 1] <= offsets[g])
        detail::fail("group_layout::from_offsets", "offsets[", g + 1, "] = ", offsets[g + 1], " <= offsets[", g,
                     "] = ", offsets[g], " (groups must be non-empty)");
    group_layout l;
    l.offsets_.assign(offsets.begin(), offsets.end());
    l.num_groups_ = offsets.size() - 1;
    l.num_samples_ = static_cast<std::size_t>(offsets[offsets.size() - 1]);
    return l;
  }

  /// Groups keyed by an id per sample, in any order (e.g. a prompt uid). Groups are numbered by first appearance;
  /// members keep batch order inside their group. Ids are arbitrary integers.
  static group_layout from_ids(span<const std::int64_t> ids) {
    group_layout l;
    std::unordered_map<std::int64_t, std::int64_t> number;
    std::vector<std::int64_t> group_of(ids.size());
    std::vector<std::int64_t> counts;
    number.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      auto [it, inserted] = number.try_emplace(ids[i], static_cast<std::int64_t>(counts.size()));
      if (inserted)
        counts.push_back(0);
      group_of[i] = it->second;
      ++counts[static_cast<std::size_t>(it->second)];
    }
    l.num_groups_ = counts.size();
    l.num_samples_ = ids.size();
    l.offsets_.assign(counts.size() + 1, 0);
    for (std::size_t g = 0; g < counts.size(); ++g)
      l.offsets_[g + 1] = l.offsets_[g] + counts[g];
    bool sorted = true;
    for (std::size_t i = 1; i < ids.size() && sorted; ++i)
      sorted = group_of[i] >= group_of[i - 1];
    if (!sorted) { // stable counting sort into slots
      l.members_.resize(ids.size());
      std::vector<std::int64_t> next(l.offsets_.begin(), l.offsets_.end() - 1);
      for (std::size_t i = 0; i < ids.size(); ++i)
        l.members_[static_cast<std::size_t>(next[static_cast<std::size_t>(group_of[i])]++)] =
            static_cast<std::int64_t>(i);
    }
    return l;
  }

  std::size_t num_groups() const noexcept { return num_groups_; }
  std::size_t num_samples() const noexcept { return num_samples_; }
  /// > 0 for a uniform layout (then offsets() and members() are empty).
  std::size_t uniform_size() const noexcept { return uniform_size_; }
  const std::vector<std::int64_t>& offsets() const noexcept { return offsets_; }
  /// Sample index of each slot; empty when groups are contiguous.
  const std::vector<std::int64_t>& members() const noexcept { return members_; }
  std::size_t size(std::size_t g) const { return ref().size(g); }

  /// The largest group size (0 for an empty layout).
  std::size_t max_size() const {
    if (uniform_size_)
      return num_groups_ ? uniform_size_ : 0;
    std::size_t m = 0;
    for (std::size_t g = 0; g < num_groups_; ++g)
      m = std::max(m, static_cast<std::size_t>(offsets_[g + 1] - offsets_[g]));
    return m;
  }

  /// Group index of every sample (host vector of num_samples()).
  std::vector<std::int64_t> group_of_samples() const {
    std::vector<std::int64_t> out(num_samples_);
    auto r = ref();
    for (std::size_t g = 0; g < num_groups_; ++g)
      for (std::size_t k = r.begin(g); k < r.end(g); ++k)
        out[r.sample(k)] = static_cast<std::int64_t>(g);
    return out;
  }

  group_ref<host_space> ref() const noexcept {
    group_ref<host_space> r;
    r.num_groups = num_groups_;
    r.num_samples = num_samples_;
    r.uniform_size = uniform_size_;
    r.offsets = {offsets_.data(), offsets_.size()};
    r.members = {members_.data(), members_.size()};
    return r;
  }
  operator group_ref<host_space>() const noexcept { return ref(); }

private:
  std::size_t num_groups_ = 0;
  std::size_t num_samples_ = 0;
  std::size_t uniform_size_ = 0;
  std::vector<std::int64_t> offsets_;
  std::vector<std::int64_t> members_;
};

/// A group layout copied into backend B's memory, for algorithms on hir::device (on hir::cpu a group_layout is
/// already usable). Keep it alive while its ref() is in use.
template <class Backend>
class group_storage {
public:
  group_storage() = default;
  group_storage(Backend const&, const group_layout& host)
      : num_groups_(host.num_groups()), num_samples_(host.num_samples()), uniform_size_(host.uniform_size()),
        offsets_(host.offsets().begin(), host.offsets().end()), members_(host.members().begin(), host.members().end()) {
  }
  group_ref<memory_space_t<Backend>> ref() const noexcept {
    group_ref<memory_space_t<Backend>> r;
    r.num_groups = num_groups_;
    r.num_samples = num_samples_;
    r.uniform_size = uniform_size_;
    using traits = backend::traits<Backend>;
    r.offsets = {traits::raw(offsets_), offsets_.size()};
    r.members = {traits::raw(members_), members_.size()};
    return r;
  }
  operator group_ref<memory_space_t<Backend>>() const noexcept { return ref(); }

private:
  std::size_t num_groups_ = 0, num_samples_ = 0, uniform_size_ = 0;
  hir::vector<std::int64_t, Backend> offsets_;
  hir::vector<std::int64_t, Backend> members_;
};

} // namespace hir
