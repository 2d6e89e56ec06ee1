// SPDX-License-Identifier: Apache-2.0
#include "kvbm/block_manager.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include <fmt/format.h>

#include "attachment.hpp"
#include "handle_access.hpp"
#include "metrics_reader.hpp"
#include "segment/segment.hpp"
#include "segment/shm_object.hpp"
#include "store/paced_verify.hpp"

namespace kvbm {

using detail::Attachment;
using detail::Grant;
using detail::HandleAccess;
using shm::IntentOp;

namespace {

Result<std::shared_ptr<BlockManager>> attach_to(Result<std::unique_ptr<detail::Segment>> seg,
                                                auto make) {
  if (!seg) {
    return tl::unexpected(seg.error());
  }
  auto att = Attachment::attach(std::move(*seg));
  if (!att) {
    return tl::unexpected(att.error());
  }
  return make(std::move(*att));
}

// Who may attach to an existing segment (DESIGN.md section 12). Attaching writes the segment
// and takes a liveness lock, so the object's mode must let the caller write, whatever privilege
// the caller has; open_or_create (which would otherwise have created a segment of its own)
// attaches only to a segment its own user owns, so that another user cannot pre-create the
// name and then read or corrupt what this process stores.
enum class Trust { kModeLetsWrite, kOwnedByCaller };

Result<std::unique_ptr<detail::Segment>> check_trust(Result<std::unique_ptr<detail::Segment>> seg,
                                                     std::string_view name,
                                                     Trust trust) {
  if (!seg) {
    return seg;
  }
  const struct stat& st = (*seg)->object_status();
  if (trust == Trust::kOwnedByCaller && st.st_uid != ::geteuid()) {
    return tl::unexpected(Error{
        Errc::kPermissionDenied, EPERM,
        fmt::format("segment '{}' exists but is owned by {}, not by this user ({}): refusing to "
                    "attach to a segment another user created; open it explicitly if it is "
                    "meant to be shared",
                    name, detail::describe_owner(st.st_uid), detail::describe_owner(::geteuid()))});
  }
  if (!detail::mode_lets_caller_write(st)) {
    return tl::unexpected(
        Error{Errc::kPermissionDenied, EACCES,
              fmt::format("segment '{}' (owned by {}, mode {:04o}) does not let this user ({}) "
                          "read and write it",
                          name, detail::describe_owner(st.st_uid), st.st_mode & 07777,
                          detail::describe_owner(::geteuid()))});
  }
  return seg;
}

}  // namespace

BlockManager::BlockManager(std::shared_ptr<Attachment> att) : att_(std::move(att)) {}
BlockManager::~BlockManager() {
  if (att_->forked()) {
    // The reaper thread does not exist in a fork child: never join the parent's thread handle.
    if (reaper_.joinable()) {
      new std::jthread(std::move(reaper_));  // leaked on purpose
    }
    return;
  }
  stop_background_reaper();
}

void BlockManager::start_background_reaper(std::chrono::milliseconds interval) {
  att_->check_fork();
  stop_background_reaper();
  reaper_ = std::jthread([att = att_, interval](std::stop_token stop) {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock<std::mutex> lock(mu);
    while (!stop.stop_requested()) {
      try {
        att->reap_dead_processes();
      } catch (...) {
        return;  // poisoned or fenced: every later call would fail the same way
      }
      cv.wait_for(lock, stop, interval, [] { return false; });
    }
  });
}

void BlockManager::stop_background_reaper() {
  if (reaper_.joinable()) {
    reaper_.request_stop();
    reaper_.join();
  }
}

Result<std::shared_ptr<BlockManager>> BlockManager::create(const SegmentConfig& config) {
  return attach_to(detail::Segment::create(config, detail::BlockStore::init_regions),
                   [](std::shared_ptr<Attachment> a) {
                     return std::shared_ptr<BlockManager>(new BlockManager(std::move(a)));
                   });
}

Result<std::shared_ptr<BlockManager>> BlockManager::open(std::string_view name) {
  return attach_to(check_trust(detail::Segment::open(name), name, Trust::kModeLetsWrite),
                   [](std::shared_ptr<Attachment> a) {
                     return std::shared_ptr<BlockManager>(new BlockManager(std::move(a)));
                   });
}

Result<std::shared_ptr<BlockManager>> BlockManager::open_or_create(const SegmentConfig& config) {
  if (auto ok = validate_config(config); !ok) {
    return tl::unexpected(ok.error());
  }
  // Exactly one concurrent caller creates (O_EXCL); the others open what it publishes.
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto created = create(config);
    if (created || created.error().code != Errc::kAlreadyExists) {
      return created;
    }
    auto opened = attach_to(
        check_trust(detail::Segment::open(config.name), config.name, Trust::kOwnedByCaller),
        [](std::shared_ptr<Attachment> a) {
          return std::shared_ptr<BlockManager>(new BlockManager(std::move(a)));
        });
    if (!opened) {
      if (opened.error().code == Errc::kNotFound) {
        continue;  // destroyed between our create and open: try again
      }
      return opened;
    }
    const std::string diff = detail::first_config_difference((*opened)->config(), config);
    if (!diff.empty()) {
      return tl::unexpected(
          Error{Errc::kInvalidConfig, 0,
                fmt::format("segment '{}' exists with a different {} than requested", config.name,
                            diff)});
    }
    return opened;
  }
  return tl::unexpected(
      Error{Errc::kSystem, 0, fmt::format("segment '{}' kept disappearing", config.name)});
}

Result<void> BlockManager::destroy(std::string_view name) {
  if (auto ok = validate_segment_name(name); !ok) {
    return ok;
  }
  // Never blocks on, follows or removes something that is not a regular file (DESIGN.md 12).
  bool damaged = false;
  bool has_payload = false;
  {
    auto obj = detail::ShmObject::open(name, detail::ShmObject::Mode::kReadOnly);
    if (!obj && obj.error().code != Errc::kPermissionDenied) {
      return tl::unexpected(obj.error());
    }
    // Only a segment whose header records a payload region owns "<name>.payload". A header
    // that cannot be read (damaged magic or layout) still had one if the object exists and is
    // not itself a segment: removing the segment must not leak it.
    const auto recorded = detail::peek_config(name);
    has_payload = recorded && recorded->bytes_per_block > 0;
    damaged = obj && !recorded;
  }
  const std::string main = "/" + std::string(name);
  if (::shm_unlink(main.c_str()) != 0) {
    const int err = errno;
    if (err == ENOENT) {
      return tl::unexpected(
          Error{Errc::kNotFound, err, fmt::format("segment '{}' does not exist", name)});
    }
    return tl::unexpected(
        Error{err == EACCES || err == EPERM ? Errc::kPermissionDenied : Errc::kSystem, err,
              fmt::format("cannot remove segment '{}': {}", name, std::strerror(err))});
  }
  const std::string pname = detail::payload_name(name);
  if (!has_payload && damaged) {
    auto payload = detail::ShmObject::open(pname, detail::ShmObject::Mode::kReadOnly);
    has_payload = payload && !detail::has_kvbm_magic(payload->fd());
  }
  // Whatever the header says, only a regular file is a payload (never a FIFO or a symlink).
  struct stat pst {};
  if (has_payload && ::lstat(("/dev/shm/" + pname).c_str(), &pst) == 0 && S_ISREG(pst.st_mode)) {
    ::shm_unlink(("/" + pname).c_str());
  }
  return {};
}

std::optional<std::vector<MutableBlock>> BlockManager::allocate_blocks(std::size_t count) {
  return allocate(count, nullptr);
}

std::optional<std::pair<std::vector<MutableBlock>, std::vector<SequenceHash>>>
BlockManager::allocate_blocks_with_evictions(std::size_t count) {
  std::vector<SequenceHash> evicted;
  evicted.reserve(count);
  auto blocks = allocate(count, &evicted);
  if (!blocks) {
    return std::nullopt;
  }
  return std::make_pair(std::move(*blocks), std::move(evicted));
}

std::optional<std::vector<MutableBlock>> BlockManager::allocate(
    std::size_t count, std::vector<SequenceHash>* evicted) {
  std::vector<Grant> grants;
  if (count > total_blocks()) {
    return std::nullopt;
  }
  grants.reserve(count);
  bool ok = false;
  for (int attempt = 0; attempt < 2 && !ok; ++attempt) {
    if (attempt == 1 && att_->reap_dead_processes() == 0) {
      break;  // nothing was freed: retrying cannot succeed
    }
    ok = att_->run(IntentOp::kAllocate, [&](detail::BlockStore& store, auto& txn) {
      return store.allocate(txn, count, att_->me(), grants, evicted);
    });
  }
  if (!ok) {
    return std::nullopt;
  }
  std::vector<MutableBlock> blocks;
  blocks.reserve(grants.size());
  for (const Grant& g : grants) {
    HandleAccess::append_mutable(blocks, att_, g);
  }
  return blocks;
}

void BlockManager::check_own(const CompleteBlock& b) const {
  if (!b) {
    throw std::invalid_argument("kvbm: register got an empty CompleteBlock");
  }
  if (HandleAccess::attachment(b) != att_.get()) {
    throw std::invalid_argument(fmt::format(
        "kvbm: CompleteBlock {} was allocated through another BlockManager (segment '{}' "
        "registers only its own blocks)",
        b.block_id(), config().name));
  }
}

ImmutableBlock BlockManager::register_block(CompleteBlock&& block) {
  att_->check_fork();
  check_own(block);  // before the block is moved: misuse must leave it with the caller
  std::vector<CompleteBlock> one;
  one.push_back(std::move(block));
  return std::move(register_blocks(std::move(one)).front());
}

std::vector<ImmutableBlock> BlockManager::register_blocks(std::vector<CompleteBlock>&& blocks) {
  att_->check_fork();
  for (const CompleteBlock& b : blocks) {
    check_own(b);
  }
  std::vector<detail::BlockStore::Staged> batch;
  batch.reserve(blocks.size());
  for (const CompleteBlock& b : blocks) {
    batch.push_back({HandleAccess::grant(b), b.sequence_hash()});
  }
  const DuplicationPolicy policy = config().duplication;
  att_->run(IntentOp::kRegister, [&](detail::BlockStore& store, auto& txn) {
    if (auto stale = store.register_staged(txn, batch, att_->me(), policy)) {
      throw std::invalid_argument(fmt::format(
          "kvbm: CompleteBlock {} is no longer staged by this process", blocks[*stale].block_id()));
    }
    for (const auto& b : batch) {
      att_->hold(b.grant);
    }
    return true;
  });
  std::vector<ImmutableBlock> out;
  out.reserve(blocks.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    // The store consumed the staged slot: the CompleteBlock gives up its reference unreleased.
    HandleAccess::append_immutable_from(out, blocks[i], batch[i].grant);
  }
  return out;
}

std::vector<ImmutableBlock> BlockManager::match_blocks(std::span<const SequenceHash> hashes) {
  std::vector<Grant> grants;
  grants.reserve(hashes.size());
  att_->run(IntentOp::kAcquire, [&](detail::BlockStore& store, auto& txn) {
    store.acquire_prefix(txn, hashes, att_->me(), grants);
    for (const Grant& g : grants) {
      att_->hold(g);
    }
    return true;
  });
  std::vector<ImmutableBlock> out;
  out.reserve(grants.size());
  for (std::size_t i = 0; i < grants.size(); ++i) {
    HandleAccess::append_immutable(out, att_.get(), grants[i], hashes[i]);
  }
  return out;
}

std::vector<std::optional<ImmutableBlock>> BlockManager::match_blocks_scattered(
    std::span<const SequenceHash> hashes) {
  std::vector<std::optional<Grant>> grants(hashes.size());
  att_->run(IntentOp::kAcquire, [&](detail::BlockStore& store, auto& txn) {
    store.acquire_each(txn, hashes, att_->me(), grants);
    for (const auto& g : grants) {
      if (g) {
        att_->hold(*g);
      }
    }
    return true;
  });
  std::vector<std::optional<ImmutableBlock>> out(hashes.size());
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    if (grants[i]) {
      out[i] = HandleAccess::make_immutable(att_.get(), *grants[i], hashes[i]);
    }
  }
  return out;
}

std::unordered_map<SequenceHash, ImmutableBlock> BlockManager::scan_matches(
    std::span<const SequenceHash> hashes, bool touch) {
  // Repeats are dropped before taking the lock (the store allocates nothing under it).
  std::vector<SequenceHash> unique;
  unique.reserve(hashes.size());
  {
    std::unordered_map<SequenceHash, bool> seen;
    seen.reserve(hashes.size());
    for (const SequenceHash& h : hashes) {
      if (seen.emplace(h, true).second) {
        unique.push_back(h);
      }
    }
  }
  std::vector<std::pair<SequenceHash, Grant>> found;
  found.reserve(unique.size());
  std::unordered_map<SequenceHash, ImmutableBlock> out;
  out.reserve(hashes.size());
  att_->run(IntentOp::kAcquire, [&](detail::BlockStore& store, auto& txn) {
    store.acquire_present(txn, unique, hashes.size(), att_->me(), touch, found);
    for (const auto& [h, g] : found) {
      att_->hold(g);
    }
    return true;
  });
  for (const auto& [h, g] : found) {
    out.emplace(h, HandleAccess::make_immutable(att_.get(), g, h));
  }
  return out;
}

std::string_view to_string(HashPresence p) noexcept {
  switch (p) {
    case HashPresence::kAbsent:
      return "absent";
    case HashPresence::kCached:
      return "cached";
    case HashPresence::kResetOnRelease:
      return "reset_on_release";
  }
  return "unknown";
}

std::vector<HashPresence> BlockManager::peek_blocks(std::span<const SequenceHash> hashes) const {
  std::vector<HashPresence> out(hashes.size(), HashPresence::kAbsent);
  // Read-only: the lock without an intent record (nothing to roll back).
  auto lock = att_->lock();
  detail::BlockStore& store = att_->store();
  const shm::SlotMeta* slots = att_->segment().slots();
  const std::uint32_t n = att_->config().block_count;
  for (const SequenceHash& h : hashes) {
    store.prefetch_lookup(h);
  }
  for (std::size_t i = 0; i < hashes.size(); ++i) {
    const std::uint32_t slot = store.find(hashes[i]);
    if (slot >= n) {
      continue;  // kNil (or an index entry out of range, which verify() reports)
    }
    const shm::SlotMeta& m = slots[slot];
    const bool primary = m.state == static_cast<std::uint8_t>(shm::SlotState::kPrimary);
    out[i] =
        primary && m.reset_on_release != 0 ? HashPresence::kResetOnRelease : HashPresence::kCached;
  }
  return out;
}

std::size_t BlockManager::lookup_prefix(std::span<const SequenceHash> hashes) const {
  auto lock = att_->lock();
  detail::BlockStore& store = att_->store();
  const shm::SlotMeta* slots = att_->segment().slots();
  const std::uint32_t n = att_->config().block_count;
  std::size_t found = 0;
  for (const SequenceHash& h : hashes) {
    const std::uint32_t slot = store.find(h);
    if (slot >= n || (slots[slot].state == static_cast<std::uint8_t>(shm::SlotState::kPrimary) &&
                      slots[slot].reset_on_release != 0)) {
      break;
    }
    ++found;
  }
  return found;
}

Result<void> BlockManager::reset_inactive_pool() {
  std::uint64_t in_use = 0;
  att_->run(IntentOp::kDrain, [&](detail::BlockStore& store, auto& txn) {
    in_use = store.drain_inactive(txn);
    return true;
  });
  if (in_use != 0) {
    return tl::unexpected(
        Error{Errc::kBlocksInUse, 0,
              fmt::format("inactive pool drained, but {} of {} blocks are still in use", in_use,
                          total_blocks())});
  }
  return {};
}

std::size_t BlockManager::reap_dead_processes() {
  return att_->reap_dead_processes();
}

std::vector<std::string> BlockManager::verify() const {
  return verify(VerifyMode::kPaced).problems;
}

VerifyReport BlockManager::verify(VerifyMode mode) const {
  VerifyReport report;
  std::optional<detail::StoreLock> lock(att_->lock());
  if (mode == VerifyMode::kExclusive) {
    att_->store().verify(report.problems);
  } else {
    const detail::MutexHold hold{[&] { lock.reset(); }, [&] { lock.emplace(att_->lock()); }};
    auto paced = detail::paced_verify(att_->store(), hold);
    report.problems = std::move(paced.problems);
    report.complete = paced.complete;
    report.notes = std::move(paced.notes);
    report.yields = paced.yields;
    report.restarts = paced.restarts;
    report.operations = paced.operations;
  }
  att_->verify_processes(report.problems);
  return report;
}

std::size_t BlockManager::total_blocks() const {
  att_->check_fork();
  return att_->config().block_count;
}

std::size_t BlockManager::available_blocks() const {
  auto lock = att_->lock();
  return att_->store().free_count() + att_->store().inactive_count();
}

std::uint32_t BlockManager::block_size() const {
  att_->check_fork();
  return att_->config().block_size;
}

DuplicationPolicy BlockManager::duplication_policy() const {
  att_->check_fork();
  return att_->config().duplication;
}

const SegmentConfig& BlockManager::config() const {
  att_->check_fork();
  return att_->config();
}

std::uint32_t BlockManager::process_index() const {
  att_->check_fork();
  return att_->me();
}

std::span<std::byte> BlockManager::payload() {
  att_->check_fork();
  std::byte* base = att_->segment().payload();
  const auto& c = att_->config();
  if (base == nullptr || c.bytes_per_block == 0) {
    return {};
  }
  return {base, static_cast<std::size_t>(std::uint64_t{c.block_count} * c.bytes_per_block)};
}

std::uint64_t BlockManager::block_offset(BlockId id) const {
  if (id >= total_blocks()) {
    throw std::invalid_argument(
        fmt::format("kvbm: block_offset({}): block id out of range (segment '{}' has {} blocks)",
                    id, config().name, total_blocks()));
  }
  return std::uint64_t{id} * att_->config().bytes_per_block;
}

PoolCounts BlockManager::counts() const {
  auto lock = att_->lock();
  return detail::read_counts(att_->segment());
}

BlockInfo BlockManager::inspect_block(BlockId id) const {
  if (id >= total_blocks()) {
    throw std::invalid_argument(
        fmt::format("kvbm: inspect_block({}): block id out of range "
                    "(segment '{}' has {} blocks)",
                    id, config().name, total_blocks()));
  }
  auto lock = att_->lock();
  const shm::SlotMeta& m = att_->segment().slots()[id];
  const auto state = static_cast<SlotState>(m.state);
  BlockInfo info{state, SequenceHash{}, 0, 0, m.reset_on_release != 0};
  if (state == SlotState::kStaged || state == SlotState::kPrimary ||
      state == SlotState::kDuplicate || state == SlotState::kInactive) {
    info.hash = SequenceHash::from_parts(m.hash_hi, m.hash_lo);
  }
  if (state == SlotState::kPrimary || state == SlotState::kDuplicate) {
    info.holder_processes = static_cast<std::uint32_t>(__builtin_popcountll(m.holders));
  }
  if (state == SlotState::kPrimary) {
    info.duplicate_refs = m.keepalive;
  }
  return info;
}

MetricsSnapshot BlockManager::metrics() const {
  auto lock = att_->lock();
  return detail::read_metrics(att_->segment(), att_->me());
}

}  // namespace kvbm
