// SPDX-License-Identifier: Apache-2.0
// Segment: this process's mapping of one kvbm segment (Boost shared_memory_object +
// mapped_region, no segment manager). Computes the fixed layout from the config, creates and
// initialises a segment (publishing init_state = kReady last), and opens one after checking the
// header, the ABI fingerprint and every region bound. Owns a private O_CLOEXEC fd of the shm
// object that carries this process's OFD liveness lock.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kvbm/config.hpp"
#include "kvbm/error.hpp"

#include "shm/block_key.hpp"
#include "shm/control.hpp"
#include "shm/event_ring.hpp"
#include "shm/hash_index_entry.hpp"
#include "shm/header.hpp"
#include "shm/lineage.hpp"
#include "shm/process_entry.hpp"
#include "shm/sketch.hpp"
#include "shm/slot.hpp"

namespace boost::interprocess {
class mapped_region;
}

namespace kvbm::detail {

struct Layout {
  std::uint64_t total_bytes = 0;
  std::uint32_t index_capacity = 0;
  shm::RegionEntry regions[shm::kRegionCount] = {};
};

Layout compute_layout(const shm::ConfigRecord& config);
/// The lineage region's capacities and placement for `block_count` blocks.
shm::LineageGeometry lineage_geometry(std::uint32_t block_count);
std::uint64_t abi_fingerprint();
shm::ConfigRecord to_record(const SegmentConfig& config);
SegmentConfig from_record(std::string_view name, const shm::ConfigRecord& record);
/// Name of the first field in which a and b differ (permissions ignored), or empty if equal.
std::string first_config_difference(const SegmentConfig& a, const SegmentConfig& b);
std::string payload_name(std::string_view name);
/// The config recorded in a segment's header if it is a kvbm segment of this layout (read
/// without mapping or validating anything else), else nullopt.
std::optional<shm::ConfigRecord> peek_config(std::string_view name);
/// True if the object behind `fd` starts with the kvbm magic (a segment of any layout, maybe
/// damaged or half-created, as opposed to a file that was never a kvbm segment).
bool has_kvbm_magic(int fd);

enum class Access { kReadWrite, kReadOnly };

class Segment {
 public:
  /// Initialises the regions that belong to the layers above (the eviction backends' lineage
  /// arena and TinyLFU sketch) on a segment being created, before it is published. The segment
  /// layer sizes and places those regions but does not know their contents.
  using RegionInit = std::function<void(Segment&)>;

  /// Creates, initialises (calling `init_regions` last) and publishes a segment.
  [[nodiscard]] static Result<std::unique_ptr<Segment>> create(const SegmentConfig& config,
                                                               const RegionInit& init_regions);
  [[nodiscard]] static Result<std::unique_ptr<Segment>> open(std::string_view name,
                                                             Access access = Access::kReadWrite);
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  int fd() const { return fd_; }
  /// Owner and mode of the shm object when it was opened (who may attach: DESIGN.md 12).
  uid_t owner_uid() const { return owner_uid_; }
  const struct stat& object_status() const { return object_status_; }
  /// Forget the fd without closing it (a fork child's copy was already closed).
  void abandon_fd() { fd_ = -1; }
  const SegmentConfig& config() const { return config_; }
  std::uint32_t block_count() const { return config_.block_count; }
  std::uint32_t max_processes() const { return config_.max_processes; }
  std::uint32_t index_capacity() const { return index_capacity_; }

  shm::SegmentHeader* header() const { return header_; }
  shm::ControlBlock* control() const { return control_; }
  shm::ProcEntry* procs() const { return procs_; }
  shm::SlotMeta* slots() const { return slots_; }
  shm::IndexEntry* index() const { return index_; }
  std::byte* payload() const { return payload_; }
  /// The key record of `slot` ([length][bytes], see shm/block_key.hpp), or nullptr when the
  /// segment keeps no keys. Requires slot < block_count().
  std::byte* key_record(std::uint32_t slot) const {
    return keys_ == nullptr ? nullptr : keys_ + std::uint64_t{slot} * key_record_bytes_;
  }
  /// The event ring (event_capacity > 0), else nullptr; its records follow the header.
  shm::EventRingHeader* events() const { return events_; }
  shm::EventRecord* event_records() const {
    return events_ == nullptr ? nullptr : reinterpret_cast<shm::EventRecord*>(events_ + 1);
  }
  /// The token record of `slot` (store_token_ids), or nullptr. Requires slot < block_count().
  shm::TokenRecord* token_record(std::uint32_t slot) const {
    return tokens_ == nullptr ? nullptr
                              : reinterpret_cast<shm::TokenRecord*>(
                                    tokens_ + std::uint64_t{slot} * token_record_bytes_);
  }
  /// The TinyLFU sketch (MultiLRU segments only), else nullptr.
  shm::SketchHeader* sketch() const { return sketch_; }
  /// The lineage backend's region (Lineage segments only), else nullptr. Initialised through
  /// create()'s RegionInit when the segment is created.
  shm::LineageHeader* lineage() const { return lineage_; }

 private:
  Segment() = default;
  Result<void> map_payload(bool create, Access access, bool* created);
  void bind_regions();

  SegmentConfig config_;
  int fd_ = -1;
  uid_t owner_uid_ = 0;
  struct stat object_status_ {};
  std::unique_ptr<boost::interprocess::mapped_region> region_;
  std::unique_ptr<boost::interprocess::mapped_region> payload_region_;
  std::uint32_t index_capacity_ = 0;
  shm::SegmentHeader* header_ = nullptr;
  shm::ControlBlock* control_ = nullptr;
  shm::ProcEntry* procs_ = nullptr;
  shm::SlotMeta* slots_ = nullptr;
  shm::IndexEntry* index_ = nullptr;
  shm::SketchHeader* sketch_ = nullptr;
  shm::LineageHeader* lineage_ = nullptr;
  std::byte* payload_ = nullptr;
  std::byte* keys_ = nullptr;
  std::uint64_t key_record_bytes_ = 0;
  shm::EventRingHeader* events_ = nullptr;
  std::byte* tokens_ = nullptr;
  std::uint64_t token_record_bytes_ = 0;
};

}  // namespace kvbm::detail
