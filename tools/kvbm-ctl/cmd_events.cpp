// SPDX-License-Identifier: Apache-2.0
// kvbm-ctl events NAME: tails the segment's KV event ring and publishes it as vLLM's
// ZmqEventPublisher does (DESIGN.md section 10), so Dynamo's KV router, llm-d's indexer and
// vLLM's example subscriber consume it unchanged. Runs in the foreground until SIGINT/SIGTERM.
//
// Sockets: an XPUB (subscribers cannot tell it from a PUB; it also reports each subscription,
// which triggers a snapshot) and an optional ROUTER for replay. Each batch is 3 frames: topic,
// 8-byte big-endian batch sequence, msgpack [ts, [events...], dp_rank]. The publisher takes no
// process entry: it reads the ring with kvbm::EventReader.
#include <signal.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <deque>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <zmq.hpp>

#include "common.hpp"
#include "events/ring_reader.hpp"
#include "events_endpoint.hpp"
#include "events_wire.hpp"

namespace kvbm::ctl {

namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) {
  g_stop = 1;
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking poll returns at once
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

struct EventsOptions {
  std::string name;
  std::string endpoint = "tcp://*:5557";
  std::string replay_endpoint;
  std::string topic;
  std::string encoding = "map";
  std::string medium = "CPU";
  std::int64_t dp_rank = 0;
  int hwm = 100000;
  std::size_t buffer = 10000;
  int batch_ms = 10;
  std::size_t max_batch = 1024;
  bool json = false;
  bool no_tokens = false;
};

double now_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string seq_frame(std::uint64_t seq) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) {
    s[static_cast<std::size_t>(i)] = static_cast<char>((seq >> (56 - 8 * i)) & 0xFF);
  }
  return s;
}

class Publisher {
 public:
  Publisher(const EventsOptions& o, EventReader reader)
      : o_(o), reader_(std::move(reader)), block_size_(reader_.block_size()) {
    wire_.encoding = o.encoding == "array" ? Encoding::kArray : Encoding::kMap;
    wire_.medium = o.medium;
    wire_.dp_rank = o.dp_rank;
  }

  /// Creates, configures and binds/connects the sockets. Errors name the endpoint.
  Result<void> open_sockets() {
    const std::string ep = offset_endpoint(o_.endpoint, o_.dp_rank);
    try {
      pub_ = zmq::socket_t(ctx_, zmq::socket_type::xpub);
      pub_.set(zmq::sockopt::sndhwm, o_.hwm);
      pub_.set(zmq::sockopt::linger, 500);
      pub_.set(zmq::sockopt::xpub_verbose, 1);  // every subscription, repeats included
      endpoint_action(pub_, ep);
    } catch (const zmq::error_t& e) {
      return tl::unexpected(endpoint_error(ep, e));
    }
    if (!o_.replay_endpoint.empty()) {
      const std::string rep = offset_endpoint(o_.replay_endpoint, o_.dp_rank);
      try {
        replay_ = zmq::socket_t(ctx_, zmq::socket_type::router);
        replay_.set(zmq::sockopt::linger, 500);
        replay_.bind(rep);  // replay always binds
      } catch (const zmq::error_t& e) {
        return tl::unexpected(endpoint_error(rep, e));
      }
    }
    return {};
  }

  int run() {
    if (auto ok = snapshot(); !ok) {
      return fail(ok.error());
    }
    bool behind = false;  // the last read was full: read again without waiting
    while (g_stop == 0) {
      if (!wait_and_serve(behind ? 0 : o_.batch_ms)) {
        break;
      }
      if (resubscribed_) {
        resubscribed_ = false;
        if (auto ok = snapshot(); !ok) {
          return fail(ok.error());
        }
        continue;
      }
      auto ev = reader_.read(cursor_, o_.max_batch);
      if (!ev) {
        if (ev.error().code == Errc::kEventsLost) {
          // Fell further behind than the ring holds: start the subscribers over.
          if (auto ok = snapshot(); !ok) {
            return fail(ok.error());
          }
          continue;
        }
        if (ev.error().code == Errc::kSystem) {
          fmt::print(stderr, "kvbm-ctl: events: {} (retrying)\n", ev.error().message);
          continue;
        }
        return fail(ev.error());
      }
      behind = ev->size() == o_.max_batch;
      std::vector<WireEvent> batch;
      bool resync = false;
      for (const Event& e : *ev) {
        switch (e.kind) {
          case EventKind::kCleared:
            append_cleared(batch);
            break;
          case EventKind::kStored:
            if (o_.no_tokens) {
              append_stored(batch, e.hash, block_size_, {});
            } else if (e.token_ids_gone) {
              resync = true;  // its ids were overwritten: only a snapshot is exact
            } else if (!e.token_ids.empty()) {
              append_stored(batch, e.hash, block_size_, e.token_ids);
            }  // else: staged without ids, nothing a consumer could index
            break;
          case EventKind::kRemoved:
            append_removed(batch, e.hash);
            break;
        }
        if (resync) {
          break;
        }
      }
      if (resync) {
        if (auto ok = snapshot(); !ok) {
          return fail(ok.error());
        }
        continue;
      }
      cursor_ += ev->size();
      publish(batch);
    }
    return kOk;
  }

 private:
  static Error endpoint_error(const std::string& ep, const zmq::error_t& e) {
    const int err = e.num();
    const bool usage = err == EINVAL || err == EPROTONOSUPPORT || err == ENODEV || err == ENOENT ||
                       err == EADDRNOTAVAIL;
    return Error{usage ? Errc::kInvalidConfig : Errc::kSystem, err,
                 fmt::format("cannot use endpoint '{}': {}", ep, e.what())};
  }

  /// Waits up to `ms` for subscriptions and replay requests and serves them. False when a
  /// signal asked to stop.
  bool wait_and_serve(int ms) {
    if (o_.json) {
      if (ms > 0) {
        timespec ts{ms / 1000, static_cast<long>(ms % 1000) * 1000000L};
        nanosleep(&ts, nullptr);  // interrupted by SIGINT/SIGTERM
      }
      return g_stop == 0;
    }
    std::vector<zmq::pollitem_t> items{{pub_.handle(), 0, ZMQ_POLLIN, 0}};
    if (replay_) {
      items.push_back({replay_.handle(), 0, ZMQ_POLLIN, 0});
    }
    try {
      zmq::poll(items, std::chrono::milliseconds(ms));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) {
        return g_stop == 0;
      }
      throw;
    }
    for (;;) {  // every pending (un)subscription
      zmq::message_t m;
      if (!pub_.recv(m, zmq::recv_flags::dontwait)) {
        break;
      }
      if (m.size() >= 1 && static_cast<const unsigned char*>(m.data())[0] == 1) {
        resubscribed_ = true;
      }
    }
    if (replay_) {
      serve_replay();
    }
    return g_stop == 0;
  }

  void serve_replay() {
    for (;;) {
      std::vector<zmq::message_t> req;
      zmq::message_t part;
      if (!replay_.recv(part, zmq::recv_flags::dontwait)) {
        return;
      }
      req.push_back(std::move(part));
      while (req.back().more()) {
        zmq::message_t next;
        if (!replay_.recv(next, zmq::recv_flags::none)) {
          break;
        }
        req.push_back(std::move(next));
      }
      // [identity, "", start_seq (8 bytes big-endian)]; anything else gets just the end marker.
      std::uint64_t start = ~std::uint64_t{0};
      if (req.size() == 3 && req[1].size() == 0 && req[2].size() == 8) {
        const auto* b = static_cast<const unsigned char*>(req[2].data());
        start = 0;
        for (int i = 0; i < 8; ++i) {
          start = start << 8 | b[i];
        }
      }
      const std::string id(static_cast<const char*>(req[0].data()), req[0].size());
      for (const auto& [seq, payload] : buffer_) {
        if (seq >= start) {
          send_parts(replay_, {id, "", seq_frame(seq), payload});
        }
      }
      send_parts(replay_, {id, "", std::string(8, '\xff'), ""});
    }
  }

  static void send_parts(zmq::socket_t& s, const std::vector<std::string>& parts) {
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const auto flags = i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      (void)s.send(zmq::buffer(parts[i]), flags);
    }
  }

  /// AllBlocksCleared + BlockStored for every cached block (parents first; a block whose parent
  /// is not cached is left out, as are its descendants), resuming the ring right after them.
  Result<void> snapshot() {
    auto snap = detail::take_snapshot(*reader_.impl());
    if (!snap) {
      return tl::unexpected(snap.error());
    }
    std::vector<WireEvent> events;
    append_cleared(events);
    std::set<std::pair<std::uint32_t, std::uint64_t>> kept;  // (position, fragment)
    for (const detail::CachedBlock& b : snap->blocks) {
      const std::uint32_t pos = b.hash.position();
      if (!o_.no_tokens && b.token_ids.empty()) {
        continue;
      }
      if (pos > 0 && kept.count({pos - 1, b.hash.parent_fragment()}) == 0) {
        continue;
      }
      kept.insert({pos, b.hash.current_fragment()});
      append_stored(events, b.hash, block_size_,
                    o_.no_tokens ? std::vector<std::uint32_t>{} : b.token_ids);
    }
    cursor_ = snap->resume_seq;
    for (std::size_t i = 0; i < events.size(); i += o_.max_batch) {
      const std::size_t end = std::min(events.size(), i + o_.max_batch);
      publish(std::vector<WireEvent>(events.begin() + static_cast<std::ptrdiff_t>(i),
                                     events.begin() + static_cast<std::ptrdiff_t>(end)));
    }
    return {};
  }

  void publish(const std::vector<WireEvent>& events) {
    if (events.empty()) {
      return;  // no batch is empty
    }
    const std::uint64_t seq = next_batch_++;
    if (o_.json) {
      for (const WireEvent& e : events) {
        auto j = event_json(e, wire_);
        j["seq"] = seq;
        std::fputs((j.dump() + "\n").c_str(), stdout);
      }
      std::fflush(stdout);
      return;
    }
    std::string payload = encode_batch(events, now_seconds(), wire_);
    send_parts(pub_, {o_.topic, seq_frame(seq), payload});
    if (replay_) {
      buffer_.emplace_back(seq, std::move(payload));
      while (buffer_.size() > o_.buffer) {
        buffer_.pop_front();
      }
    }
  }

  const EventsOptions& o_;
  EventReader reader_;
  std::uint32_t block_size_;
  WireOptions wire_;
  zmq::context_t ctx_;
  zmq::socket_t pub_;
  zmq::socket_t replay_;
  std::deque<std::pair<std::uint64_t, std::string>> buffer_;
  std::uint64_t cursor_ = 0;
  std::uint64_t next_batch_ = 0;
  bool resubscribed_ = false;
};

int run_events(const EventsOptions& o) {
  auto reader = EventReader::open(o.name);
  if (!reader) {
    if (reader.error().code == Errc::kInvalidConfig) {
      // A segment without an event ring: the operation cannot be done, not a usage error.
      fmt::print(stderr, "kvbm-ctl: {}\n", reader.error().message);
      return kProblems;
    }
    return fail(reader.error());
  }
  if (!reader->stores_token_ids() && !o.no_tokens) {
    fmt::print(stderr,
               "kvbm-ctl: segment '{}' does not keep token ids (create it with "
               "store_token_ids): Dynamo's router and llm-d's indexer index nothing without "
               "them; pass --no-tokens to publish location-only events anyway\n",
               o.name);
    return kProblems;
  }
  if (!o.json) {
    if (auto ok = check_endpoint(o.endpoint, o.dp_rank); !ok) {
      return fail(ok.error());
    }
    if (!o.replay_endpoint.empty()) {
      if (auto ok = check_endpoint(o.replay_endpoint, o.dp_rank); !ok) {
        return fail(ok.error());
      }
    }
  }
  install_signal_handlers();
  Publisher pub(o, std::move(*reader));
  if (!o.json) {
    if (auto ok = pub.open_sockets(); !ok) {
      return fail(ok.error());
    }
  }
  return pub.run();
}

}  // namespace

Command add_events(CLI::App& app) {
  auto o = std::make_shared<EventsOptions>();
  auto* sub = app.add_subcommand(
      "events",
      "publish the segment's KV events over ZeroMQ as vLLM does (for Dynamo's KV router, "
      "llm-d's indexer); runs until SIGINT/SIGTERM");
  sub->add_option("NAME", o->name, "segment name")->required();
  sub->add_option("--endpoint", o->endpoint,
                  "publishing endpoint; binds when it contains '*' or '::' or is ipc:// or "
                  "inproc://, else connects (e.g. to an indexer whose SUB binds)")
      ->default_val("tcp://*:5557");
  sub->add_option("--replay-endpoint", o->replay_endpoint,
                  "ROUTER endpoint (binds) answering [id, '', start_seq] with the buffered "
                  "batches from start_seq on");
  sub->add_option("--topic", o->topic, "topic frame of every message (llm-d: kv@<pod>@<model>)")
      ->default_val("");
  sub->add_option("--encoding", o->encoding, "event encoding: map (tagged) or array")
      ->default_val("map")
      ->check(CLI::IsMember({"map", "array"}));
  sub->add_option("--medium", o->medium, "medium of every event")->default_val("CPU");
  sub->add_option("--dp-rank", o->dp_rank,
                  "data-parallel rank: sent in every batch, and added to the tcp ports")
      ->default_val(0)
      ->check(CLI::Range(0, 65535));
  sub->add_option("--hwm", o->hwm, "send high-water mark of the publishing socket")
      ->default_val(100000)
      ->check(CLI::Range(0, 100000000));
  sub->add_option("--buffer", o->buffer, "batches kept for replay")
      ->default_val(10000)
      ->check(CLI::Range(1, 10000000));
  sub->add_option("--batch-ms", o->batch_ms, "how often the ring is read (milliseconds)")
      ->default_val(10)
      ->check(CLI::Range(1, 60000));
  sub->add_option("--max-batch", o->max_batch, "most events in one batch")
      ->default_val(1024)
      ->check(CLI::Range(1, 1000000));
  sub->add_flag("--json", o->json,
                "print one JSON line per wire event (map encoding plus \"seq\") instead of "
                "publishing");
  sub->add_flag("--no-tokens", o->no_tokens,
                "publish segments without store_token_ids (token_ids is [])");
  return {sub, [o] { return run_events(*o); }};
}

}  // namespace kvbm::ctl
