// SPDX-License-Identifier: Apache-2.0
#include "segment/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <random>
#include <thread>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <fmt/format.h>

#include "segment/liveness.hpp"
#include "segment/shm_object.hpp"

namespace kvbm::detail {
namespace bip = boost::interprocess;

namespace {

Error make_error(Errc code, std::string message, int sys_errno = 0) {
  return Error{code, sys_errno, std::move(message)};
}

// FNV-1a over the sizes and offsets of every segment-resident type: a segment written by a build
// with another layout is refused instead of misread.
constexpr std::uint64_t fnv(std::uint64_t h, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xFF;
    h *= 0x100000001B3ull;
  }
  return h;
}

#define KVBM_FP_OFF(T, f) offsetof(T, f)
std::uint64_t compute_fingerprint() {
  using namespace shm;
  std::uint64_t h = 0xCBF29CE484222325ull;
  const std::uint64_t parts[] = {sizeof(SegmentHeader),
                                 alignof(SegmentHeader),
                                 KVBM_FP_OFF(SegmentHeader, config),
                                 KVBM_FP_OFF(SegmentHeader, regions),
                                 KVBM_FP_OFF(SegmentHeader, init_state),
                                 KVBM_FP_OFF(SegmentHeader, epoch),
                                 sizeof(ConfigRecord),
                                 sizeof(ControlBlock),
                                 KVBM_FP_OFF(ControlBlock, intent),
                                 KVBM_FP_OFF(ControlBlock, free_list),
                                 KVBM_FP_OFF(ControlBlock, inactive_list),
                                 KVBM_FP_OFF(ControlBlock, state_counts),
                                 KVBM_FP_OFF(ControlBlock, counters),
                                 sizeof(Intent),
                                 kIntentMaxSlots,
                                 sizeof(SlotImage),
                                 sizeof(RobustMutex),
                                 KVBM_FP_OFF(RobustMutex, holder),
                                 sizeof(ProcEntry),
                                 sizeof(SlotMeta),
                                 KVBM_FP_OFF(SlotMeta, holders),
                                 KVBM_FP_OFF(SlotMeta, tick),
                                 sizeof(IndexEntry),
                                 kLineageRegionVersion,
                                 sizeof(LineageHeader),
                                 KVBM_FP_OFF(LineageHeader, leaves),
                                 KVBM_FP_OFF(LineageHeader, overflow),
                                 sizeof(LineageNode),
                                 KVBM_FP_OFF(LineageNode, slot),
                                 KVBM_FP_OFF(LineageNode, prev_sibling),
                                 sizeof(LineageHeapEntry),
                                 kLineageHeapArity,
                                 kLineageKeyNodeBits,
                                 kMaxKeyBytes,
                                 kKeyLengthBytes,
                                 KVBM_FP_OFF(ConfigRecord, key_bytes),
                                 KVBM_FP_OFF(ConfigRecord, layout_tag),
                                 KVBM_FP_OFF(ConfigRecord, event_capacity),
                                 KVBM_FP_OFF(Intent, events_next_before),
                                 sizeof(EventRingHeader),
                                 sizeof(EventRecord),
                                 sizeof(TokenRecord),
                                 kRegionCount,
                                 kCacheLine,
                                 kMaxProcesses,
                                 kLivenessLockBase};
  for (std::uint64_t p : parts) {
    h = fnv(h, p);
  }
  return h;
}
#undef KVBM_FP_OFF

Error boost_error(const bip::interprocess_exception& e, std::string_view name, const char* what) {
  int err = e.get_native_error();
  if (err == ENOENT || e.get_error_code() == bip::not_found_error) {
    return make_error(Errc::kNotFound, fmt::format("segment '{}' does not exist", name), ENOENT);
  }
  if (err == EEXIST || e.get_error_code() == bip::already_exists_error) {
    return make_error(Errc::kAlreadyExists, fmt::format("segment '{}' already exists", name),
                      EEXIST);
  }
  if (err == EACCES || err == EPERM || e.get_error_code() == bip::security_error) {
    return make_error(Errc::kPermissionDenied,
                      fmt::format("no permission to {} segment '{}'", what, name), err);
  }
  return make_error(Errc::kSystem, fmt::format("cannot {} segment '{}': {}", what, name, e.what()),
                    err);
}

// The liveness lock lives on an open file description of its own that is never mapped: a
// mapping holds a reference to the description it was made from, so a fork child that inherits
// the mapping would keep a lock on that description alive after this process died. Reopening
// through /proc/self/fd makes a new description of the same inode (no race with unlink).
int open_lock_fd(int fd, bool read_only) {
  const std::string path = fmt::format("/proc/self/fd/{}", fd);
  int lock_fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (lock_fd < 0) {
    lock_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);  // no /proc: same description, fork caveat
  }
  return lock_fd;
}

// Lets Boost's mapped_region map a descriptor that ShmObject opened (and checked) itself.
struct FdMapping {
  int fd;
  bip::mapping_handle_t get_mapping_handle() const {
    return bip::ipcdetail::mapping_handle_from_file_handle(fd);
  }
};

std::uint64_t realtime_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace

std::uint64_t abi_fingerprint() {
  static const std::uint64_t fp = compute_fingerprint();
  return fp;
}

std::string payload_name(std::string_view name) {
  return fmt::format("{}.payload", name);
}

shm::LineageGeometry lineage_geometry(std::uint32_t block_count) {
  // Nodes: each is Real (an Inactive block), the ghost of a held block that left the pool with
  // children, or a ghost placeholder whose first child is one of those; so 2 x (Inactive + held)
  // <= 2N nodes hold every tree that a rebuild can produce. Only ghosts of blocks reset after
  // such a hit can pile up beyond it; then new blocks go to the overflow list (still cached,
  // evicted first). Capped so that a node index fits a key bucket (beyond 67M blocks the arena
  // is smaller than 2N).
  const std::uint32_t nodes = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(2 * std::uint64_t{block_count} + 16, shm::kLineageMaxNodes));
  // Key index: load factor <= 0.5 when the arena is full (about 0.25 in steady use), so a miss
  // (every fresh insert looks its own key up) probes about two buckets.
  // Heap: leaves are Real nodes, at most one per block.
  return shm::place_lineage_region(nodes, 2 * nodes, block_count);
}

Layout compute_layout(const shm::ConfigRecord& c) {
  Layout l;
  std::uint64_t off = shm::align_up(sizeof(shm::SegmentHeader), shm::kCacheLine);
  auto place = [&](shm::Region r, std::uint64_t bytes) {
    l.regions[r] = shm::RegionEntry{off, bytes};
    off = shm::align_up(off + bytes, shm::kCacheLine);
  };
  l.index_capacity = std::max<std::uint32_t>(16, c.block_count * 2);
  place(shm::kRegionControl, sizeof(shm::ControlBlock));
  place(shm::kRegionProcesses, std::uint64_t{c.max_processes} * sizeof(shm::ProcEntry));
  place(shm::kRegionSlots, std::uint64_t{c.block_count} * sizeof(shm::SlotMeta));
  place(shm::kRegionIndex, std::uint64_t{l.index_capacity} * sizeof(shm::IndexEntry));
  if (c.eviction == static_cast<std::uint32_t>(EvictionPolicy::kMultiLru)) {
    place(shm::kRegionSketch,
          sizeof(shm::SketchHeader) +
              shm::sketch_table_len(c.frequency_capacity) * sizeof(std::uint64_t));
  }
  if (c.eviction == static_cast<std::uint32_t>(EvictionPolicy::kLineage)) {
    place(shm::kRegionLineage, lineage_geometry(c.block_count).bytes);
  }
  if (c.key_bytes > 0) {
    place(shm::kRegionKeys, std::uint64_t{c.block_count} * shm::key_record_bytes(c.key_bytes));
  }
  if (c.event_capacity > 0) {
    place(shm::kRegionEvents, shm::event_ring_bytes(c.event_capacity));
  }
  if (c.store_token_ids != 0) {
    place(shm::kRegionTokens, std::uint64_t{c.block_count} * shm::token_record_bytes(c.block_size));
  }
  l.total_bytes = off;
  return l;
}

shm::ConfigRecord to_record(const SegmentConfig& c) {
  shm::ConfigRecord r{};
  r.block_count = c.block_count;
  r.block_size = c.block_size;
  r.max_processes = c.max_processes;
  r.eviction = static_cast<std::uint32_t>(c.eviction);
  r.lineage_order = static_cast<std::uint32_t>(c.lineage_order);
  r.duplication = static_cast<std::uint32_t>(c.duplication);
  r.default_reset_on_release = c.default_reset_on_release ? 1 : 0;
  r.frequency_capacity = c.frequency_capacity;
  for (int i = 0; i < 3; ++i) {
    r.multi_lru_thresholds[i] = c.multi_lru_thresholds[i];
  }
  r.permissions = c.permissions;
  r.bytes_per_block = c.bytes_per_block;
  r.key_bytes = c.key_bytes;
  r.event_capacity = c.event_capacity;
  r.store_token_ids = c.store_token_ids ? 1 : 0;
  r.layout_tag = c.layout_tag;
  return r;
}

SegmentConfig from_record(std::string_view name, const shm::ConfigRecord& r) {
  SegmentConfig c;
  c.name = std::string(name);
  c.block_count = r.block_count;
  c.block_size = r.block_size;
  c.max_processes = r.max_processes;
  c.eviction = static_cast<EvictionPolicy>(r.eviction);
  c.lineage_order = static_cast<LineageOrder>(r.lineage_order);
  c.duplication = static_cast<DuplicationPolicy>(r.duplication);
  c.default_reset_on_release = r.default_reset_on_release != 0;
  c.frequency_capacity = r.frequency_capacity;
  for (int i = 0; i < 3; ++i) {
    c.multi_lru_thresholds[i] = r.multi_lru_thresholds[i];
  }
  c.permissions = r.permissions;
  c.bytes_per_block = r.bytes_per_block;
  c.key_bytes = r.key_bytes;
  c.event_capacity = r.event_capacity;
  c.store_token_ids = r.store_token_ids != 0;
  c.layout_tag = r.layout_tag;
  return c;
}

std::string first_config_difference(const SegmentConfig& a, const SegmentConfig& b) {
  if (a.block_count != b.block_count)
    return "block_count";
  if (a.block_size != b.block_size)
    return "block_size";
  if (a.max_processes != b.max_processes)
    return "max_processes";
  if (a.eviction != b.eviction)
    return "eviction";
  if (a.lineage_order != b.lineage_order)
    return "lineage_order";
  if (a.duplication != b.duplication)
    return "duplication";
  if (a.default_reset_on_release != b.default_reset_on_release)
    return "default_reset_on_release";
  if (a.multi_lru_thresholds != b.multi_lru_thresholds)
    return "multi_lru_thresholds";
  if (a.frequency_capacity != b.frequency_capacity)
    return "frequency_capacity";
  if (a.bytes_per_block != b.bytes_per_block)
    return "bytes_per_block";
  if (a.key_bytes != b.key_bytes)
    return "key_bytes";
  if (a.layout_tag != b.layout_tag)
    return "layout_tag";
  if (a.event_capacity != b.event_capacity)
    return "event_capacity";
  if (a.store_token_ids != b.store_token_ids)
    return "store_token_ids";
  return {};
}

Segment::~Segment() {
  // Unmapping must never happen while this process holds the store mutex (the kernel would stop
  // walking the robust list); no code path keeps the lock past a public call.
  region_.reset();
  payload_region_.reset();
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

void Segment::bind_regions() {
  auto* base = static_cast<std::byte*>(region_->get_address());
  header_ = reinterpret_cast<shm::SegmentHeader*>(base);
  const auto& r = header_->regions;
  control_ = reinterpret_cast<shm::ControlBlock*>(base + r[shm::kRegionControl].offset);
  procs_ = reinterpret_cast<shm::ProcEntry*>(base + r[shm::kRegionProcesses].offset);
  slots_ = reinterpret_cast<shm::SlotMeta*>(base + r[shm::kRegionSlots].offset);
  index_ = reinterpret_cast<shm::IndexEntry*>(base + r[shm::kRegionIndex].offset);
  lineage_ = r[shm::kRegionLineage].bytes == 0
                 ? nullptr
                 : reinterpret_cast<shm::LineageHeader*>(base + r[shm::kRegionLineage].offset);
  keys_ = r[shm::kRegionKeys].bytes == 0
              ? nullptr
              : reinterpret_cast<std::byte*>(base + r[shm::kRegionKeys].offset);
  key_record_bytes_ = shm::key_record_bytes(config_.key_bytes);
  events_ = r[shm::kRegionEvents].bytes == 0
                ? nullptr
                : reinterpret_cast<shm::EventRingHeader*>(base + r[shm::kRegionEvents].offset);
  tokens_ = r[shm::kRegionTokens].bytes == 0
                ? nullptr
                : reinterpret_cast<std::byte*>(base + r[shm::kRegionTokens].offset);
  token_record_bytes_ = shm::token_record_bytes(config_.block_size);
  sketch_ = r[shm::kRegionSketch].bytes == 0
                ? nullptr
                : reinterpret_cast<shm::SketchHeader*>(base + r[shm::kRegionSketch].offset);
  index_capacity_ = header_->index_capacity;
}

Result<void> Segment::map_payload(bool create, Access access, bool* created) {
  if (config_.bytes_per_block == 0) {
    return {};
  }
  const std::string pname = payload_name(config_.name);
  const std::uint64_t bytes = config_.bytes_per_block * config_.block_count;
  try {
    std::unique_ptr<bip::shared_memory_object> obj;
    if (create) {
      obj = std::make_unique<bip::shared_memory_object>(
          bip::create_only, pname.c_str(), bip::read_write,
          bip::permissions(static_cast<int>(config_.permissions)));
      *created = true;
      obj->truncate(static_cast<bip::offset_t>(bytes));
      if (int rc =
              ::posix_fallocate(obj->get_mapping_handle().handle, 0, static_cast<off_t>(bytes));
          rc != 0) {
        return tl::unexpected(make_error(Errc::kSystem,
                                         fmt::format("cannot reserve {} bytes for payload '{}': {}",
                                                     bytes, pname, std::strerror(rc)),
                                         rc));
      }
    } else {
      auto opened =
          ShmObject::open(pname, access == Access::kReadOnly ? ShmObject::Mode::kReadOnly
                                                             : ShmObject::Mode::kReadWrite);
      if (!opened) {
        Error err = opened.error();
        if (err.code == Errc::kNotFound) {
          // The segment exists; its payload object does not: the segment is damaged, not absent.
          err = Error{Errc::kCorrupted, ENOENT,
                      fmt::format("segment '{}' records a payload region but '{}' is missing; "
                                  "destroy the segment",
                                  config_.name, pname)};
        } else if (err.code == Errc::kLayoutMismatch) {
          err.code = Errc::kCorrupted;  // the segment is ours; its payload name is taken
        }
        return tl::unexpected(std::move(err));
      }
      if (static_cast<std::uint64_t>(opened->status().st_size) < bytes) {
        return tl::unexpected(
            make_error(Errc::kCorrupted,
                       fmt::format("payload object '{}' is smaller than {} bytes", pname, bytes)));
      }
      payload_region_ = std::make_unique<bip::mapped_region>(
          FdMapping{opened->fd()}, access == Access::kReadOnly ? bip::read_only : bip::read_write,
          0, bytes);
      payload_ = static_cast<std::byte*>(payload_region_->get_address());
      return {};
    }
    payload_region_ = std::make_unique<bip::mapped_region>(*obj, bip::read_write, 0, bytes);
    payload_ = static_cast<std::byte*>(payload_region_->get_address());
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(boost_error(e, pname, create ? "create payload of" : "map payload of"));
  }
  return {};
}

std::optional<shm::ConfigRecord> peek_config(std::string_view name) {
  auto obj = ShmObject::open(name, ShmObject::Mode::kReadOnly);
  if (!obj) {
    return std::nullopt;
  }
  shm::SegmentHeader h;
  const bool read =
      ::pread(obj->fd(), static_cast<void*>(&h), sizeof(h), 0) == static_cast<ssize_t>(sizeof(h));
  if (!read || h.magic != shm::kMagic || h.layout_major != shm::kLayoutMajor ||
      h.abi_fingerprint != abi_fingerprint()) {
    return std::nullopt;
  }
  return h.config;
}

bool has_kvbm_magic(int fd) {
  std::uint64_t magic = 0;
  return ::pread(fd, &magic, sizeof(magic), 0) == static_cast<ssize_t>(sizeof(magic)) &&
         magic == shm::kMagic;
}

Result<std::unique_ptr<Segment>> Segment::create(const SegmentConfig& config,
                                                 const RegionInit& init_regions) {
  if (auto ok = kvbm::validate_config(config); !ok) {
    return tl::unexpected(ok.error());
  }
  const shm::ConfigRecord record = to_record(config);
  const Layout layout = compute_layout(record);
  std::unique_ptr<Segment> seg(new Segment());
  seg->config_ = config;
  std::unique_ptr<bip::shared_memory_object> obj;
  try {
    obj = std::make_unique<bip::shared_memory_object>(
        bip::create_only, config.name.c_str(), bip::read_write,
        bip::permissions(static_cast<int>(config.permissions)));
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(boost_error(e, config.name, "create"));
  }
  // From here on a failure unlinks what this call created, so the name is free again.
  bool payload_created = false;
  auto fail = [&](Error err) -> Result<std::unique_ptr<Segment>> {
    seg.reset();
    obj.reset();
    bip::shared_memory_object::remove(config.name.c_str());
    if (payload_created) {
      bip::shared_memory_object::remove(payload_name(config.name).c_str());
    }
    return tl::unexpected(std::move(err));
  };
  seg->fd_ = open_lock_fd(obj->get_mapping_handle().handle, false);
  if (seg->fd_ < 0) {
    return fail(make_error(Errc::kSystem, "cannot duplicate the segment fd", errno));
  }
  ::fstat(seg->fd_, &seg->object_status_);
  seg->owner_uid_ = seg->object_status_.st_uid;
  // Held while initialising: an opener that finds init_state stuck and this lock free knows the
  // creator died.
  ofd_try_lock(seg->fd_, shm::kInitLockOffset);
  try {
    obj->truncate(static_cast<bip::offset_t>(layout.total_bytes));
  } catch (const bip::interprocess_exception& e) {
    return fail(boost_error(e, config.name, "size"));
  }
  // The magic and init_state = kInitializing go in before anything slow (reserving the pages
  // can take a while): a creator killed from here on leaves an object that says it is a kvbm
  // segment whose creation never finished, which open reports as kCorrupted and kvbm-ctl
  // destroy removes without --force (an object without the magic is not ours to remove).
  {
    const std::uint64_t magic = shm::kMagic;
    const auto initialising = static_cast<std::uint32_t>(shm::InitState::kInitializing);
    if (::pwrite(seg->fd_, &initialising, sizeof(initialising),
                 offsetof(shm::SegmentHeader, init_state)) != sizeof(initialising) ||
        ::pwrite(seg->fd_, &magic, sizeof(magic), offsetof(shm::SegmentHeader, magic)) !=
            sizeof(magic)) {
      return fail(make_error(Errc::kSystem, "cannot write the segment header", errno));
    }
  }
  // Reserve the tmpfs pages now: a page fault later must not SIGBUS a process mid-transition
  // because /dev/shm filled up.
  if (int rc = ::posix_fallocate(seg->fd_, 0, static_cast<off_t>(layout.total_bytes)); rc != 0) {
    return fail(make_error(Errc::kSystem,
                           fmt::format("cannot reserve {} bytes in /dev/shm for '{}': {}",
                                       layout.total_bytes, config.name, std::strerror(rc)),
                           rc));
  }
  try {
    seg->region_ = std::make_unique<bip::mapped_region>(*obj, bip::read_write);
  } catch (const bip::interprocess_exception& e) {
    return fail(boost_error(e, config.name, "map"));
  }
  obj.reset();  // our own fd keeps the object open; Boost's is closed

  auto* h = new (seg->region_->get_address()) shm::SegmentHeader();
  h->magic = shm::kMagic;  // again at once: the constructor zeroed it
  h->init_state.store(static_cast<std::uint32_t>(shm::InitState::kInitializing),
                      std::memory_order_relaxed);
  h->layout_major = shm::kLayoutMajor;
  h->layout_minor = shm::kLayoutMinor;
  h->header_bytes = sizeof(shm::SegmentHeader);
  h->abi_fingerprint = abi_fingerprint();
  h->segment_bytes = layout.total_bytes;
  h->nonce = std::random_device{}() | (std::uint64_t{std::random_device{}()} << 32);
  h->created_ns = realtime_ns();
  h->creator_pid = ::getpid();
  h->index_capacity = layout.index_capacity;
  std::snprintf(h->name, sizeof(h->name), "%s", config.name.c_str());
  h->config = record;
  std::memcpy(h->regions, layout.regions, sizeof(layout.regions));
  seg->bind_regions();

  auto* ctl = new (seg->control_) shm::ControlBlock();
  if (!ctl->mutex.init()) {
    return fail(make_error(Errc::kSystem, "cannot initialise the robust store mutex"));
  }
  for (std::uint32_t p = 0; p < config.max_processes; ++p) {
    new (&seg->procs_[p]) shm::ProcEntry();
  }
  const std::uint32_t n = config.block_count;
  for (std::uint32_t i = 0; i < n; ++i) {
    auto* s = new (&seg->slots_[i]) shm::SlotMeta();
    s->state = static_cast<std::uint8_t>(shm::SlotState::kReset);
    s->reset_on_release = record.default_reset_on_release;
    s->owner = shm::kNil;
    s->dup_primary = shm::kNil;
    s->prev = i == 0 ? shm::kNil : i - 1;
    s->next = i + 1 == n ? shm::kNil : i + 1;
    s->tick = i;
  }
  ctl->free_list = shm::SlotList{0, n - 1, n};
  ctl->inactive_list = shm::SlotList{shm::kNil, shm::kNil, 0};
  for (auto& l : ctl->level_lists) {
    l = shm::SlotList{shm::kNil, shm::kNil, 0};
  }
  init_regions(*seg);
  ctl->next_tick = n;
  ctl->state_counts[static_cast<int>(shm::SlotState::kReset)].store(n);
  for (std::uint32_t b = 0; b < layout.index_capacity; ++b) {
    seg->index_[b] = shm::IndexEntry{shm::kNil, 0};
  }
  if (auto ok = seg->map_payload(true, Access::kReadWrite, &payload_created); !ok) {
    return fail(ok.error());
  }
  h->init_state.store(static_cast<std::uint32_t>(shm::InitState::kReady),
                      std::memory_order_release);
  ofd_unlock(seg->fd_, shm::kInitLockOffset);
  return seg;
}

Result<std::unique_ptr<Segment>> Segment::open(std::string_view name, Access access) {
  if (auto ok = kvbm::validate_segment_name(name); !ok) {
    return tl::unexpected(ok.error());
  }
  std::unique_ptr<Segment> seg(new Segment());
  const auto mode = access == Access::kReadOnly ? bip::read_only : bip::read_write;
  auto obj = ShmObject::open(
      name, access == Access::kReadOnly ? ShmObject::Mode::kReadOnly : ShmObject::Mode::kReadWrite);
  if (!obj) {
    return tl::unexpected(obj.error());
  }
  seg->object_status_ = obj->status();
  seg->owner_uid_ = obj->status().st_uid;
  seg->fd_ = open_lock_fd(obj->fd(), access == Access::kReadOnly);
  if (seg->fd_ < 0) {
    return tl::unexpected(make_error(Errc::kSystem, "cannot duplicate the segment fd", errno));
  }
  auto mismatch = [&](std::string why) {
    return tl::unexpected(
        make_error(Errc::kLayoutMismatch,
                   fmt::format("'{}' is not a kvbm segment of this layout: {}", name, why)));
  };
  auto corrupted = [&](std::string why) {
    return tl::unexpected(
        make_error(Errc::kCorrupted, fmt::format("segment '{}' is corrupted: {}", name, why)));
  };
  auto init_state = [&]() {
    std::uint32_t state = 0;
    if (::pread(seg->fd_, &state, sizeof(state), offsetof(shm::SegmentHeader, init_state)) !=
        sizeof(state)) {
      state = 0;
    }
    return state;
  };

  // A segment still being created is zero-sized or has init_state kInitializing; wait up to 2 s
  // while its creator lives. The creator holds its init lock before the object can show the
  // magic, so magic + kInitializing + a free init lock is a creator that died. An object without
  // the magic and nobody holding the init lock gets a short grace (a creator between shm_open
  // and taking the lock) and is then not a kvbm segment.
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::seconds(2);
  const auto grace = start + std::chrono::milliseconds(100);
  std::uint64_t size = 0;
  for (;;) {
    struct stat st {};
    if (::fstat(seg->fd_, &st) != 0) {
      return tl::unexpected(make_error(Errc::kSystem, "cannot stat the segment", errno));
    }
    size = static_cast<std::uint64_t>(st.st_size);
    bool initialising = size == 0;
    bool has_magic = false;
    if (size > 0) {
      std::uint64_t magic = 0;
      if (::pread(seg->fd_, &magic, sizeof(magic), 0) != sizeof(magic)) {
        magic = 0;
      }
      has_magic = magic == shm::kMagic;
      if (size < sizeof(magic)) {
        return mismatch(fmt::format("only {} bytes", size));
      }
      if (size < sizeof(shm::SegmentHeader)) {
        if (has_magic) {
          return corrupted(fmt::format("truncated to {} bytes", size));
        }
        if (magic != 0) {
          return mismatch(fmt::format("only {} bytes and no kvbm magic", size));
        }
        initialising = true;
      } else {
        const std::uint32_t state = init_state();
        if (!has_magic && magic != 0) {
          return mismatch("bad magic number");
        }
        initialising = !has_magic || state == static_cast<std::uint32_t>(shm::InitState::kNone) ||
                       state == static_cast<std::uint32_t>(shm::InitState::kInitializing);
        if (!has_magic && state != 0) {
          return mismatch("bad magic number");
        }
      }
    }
    if (!initialising) {
      break;
    }
    const auto now = std::chrono::steady_clock::now();
    const bool creator_alive = ofd_is_locked(seg->fd_, shm::kInitLockOffset);
    if (has_magic && !creator_alive &&
        init_state() != static_cast<std::uint32_t>(shm::InitState::kReady)) {
      return corrupted("its creation never finished (the creating process died); destroy it");
    }
    if (!has_magic && !creator_alive && now >= grace) {
      return mismatch(size == 0 ? "the object is empty and nobody is creating it"
                                : "no kvbm header and nobody is creating it");
    }
    if (now >= deadline) {
      return corrupted(creator_alive
                           ? "still being initialised after 2 s"
                           : "initialisation never finished (its creator died); destroy it");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }

  try {
    seg->region_ = std::make_unique<bip::mapped_region>(FdMapping{obj->fd()}, mode, 0, size);
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(boost_error(e, name, "map"));
  }
  const auto* h = static_cast<const shm::SegmentHeader*>(seg->region_->get_address());
  if (h->layout_major != shm::kLayoutMajor) {
    return mismatch(fmt::format("layout {}.{}, this build understands {}.{}", h->layout_major,
                                h->layout_minor, shm::kLayoutMajor, shm::kLayoutMinor));
  }
  if (h->header_bytes != sizeof(shm::SegmentHeader) || h->abi_fingerprint != abi_fingerprint()) {
    return mismatch(fmt::format("ABI fingerprint {:016x}, this build has {:016x}",
                                h->abi_fingerprint, abi_fingerprint()));
  }
  if (h->segment_bytes > size) {
    return corrupted(
        fmt::format("header says {} bytes but the object has {}", h->segment_bytes, size));
  }
  SegmentConfig config = from_record(name, h->config);
  if (auto ok = kvbm::validate_config(config); !ok) {
    return corrupted(fmt::format("invalid config in header: {}", ok.error().message));
  }
  const Layout expect = compute_layout(h->config);
  if (expect.total_bytes != h->segment_bytes || expect.index_capacity != h->index_capacity ||
      std::memcmp(expect.regions, h->regions, sizeof(expect.regions)) != 0) {
    return corrupted("region table does not match the recorded config");
  }
  seg->config_ = std::move(config);
  seg->bind_regions();
  if (auto ok = seg->map_payload(false, access, nullptr); !ok) {
    return tl::unexpected(ok.error());
  }
  return seg;
}

}  // namespace kvbm::detail
