// SPDX-License-Identifier: Apache-2.0
// HandleAccess: how the library builds and takes apart the public block guards. A handle made
// here owns exactly what the store already granted (an exclusive slot, or one local count of a
// held slot); nothing here touches shared memory.
#pragma once

#include <memory>
#include <vector>

#include "kvbm/blocks.hpp"

#include "attachment.hpp"

namespace kvbm::detail {

struct HandleAccess {
  [[nodiscard]] static MutableBlock make_mutable(const std::shared_ptr<Attachment>& att, Grant g) {
    MutableBlock b;
    fill(b, att, g);
    return b;
  }
  /// make_mutable, built in place at the end of `out` (no temporary to move and destroy).
  static void append_mutable(std::vector<MutableBlock>& out,
                             const std::shared_ptr<Attachment>& att,
                             Grant g) {
    fill(out.emplace_back(), att, g);
  }
  /// Requires: Attachment::hold(g) (or, on the WeakBlock fast path, an increment of a non-zero
  /// local count) was already done for this handle.
  [[nodiscard]] static ImmutableBlock make_immutable(Attachment* att, Grant g, SequenceHash h) {
    ImmutableBlock b;
    fill(b, att, g, h);
    return b;
  }
  /// make_immutable, built in place at the end of `out`.
  static void append_immutable(std::vector<ImmutableBlock>& out,
                               Attachment* att,
                               Grant g,
                               SequenceHash h) {
    fill(out.emplace_back(), att, g, h);
  }
  /// A registered CompleteBlock's ImmutableBlock, built in place at the end of `out`; the
  /// CompleteBlock is emptied without releasing anything (the store consumed the staged slot).
  /// Requires: Attachment::hold(g) was already done for the new handle.
  static void append_immutable_from(std::vector<ImmutableBlock>& out, CompleteBlock& c, Grant g) {
    fill(out.emplace_back(), c.att_.get(), g, c.hash_);
    c.att_.reset();  // the held slot keeps the attachment alive now (Attachment::hold)
  }
  [[nodiscard]] static CompleteBlock make_complete(std::shared_ptr<Attachment> att,
                                                   Grant g,
                                                   SequenceHash h) {
    CompleteBlock b;
    b.att_ = std::move(att);
    b.id_ = g.slot;
    b.gen_ = g.generation;
    b.hash_ = h;
    return b;
  }
  [[nodiscard]] static WeakBlock make_weak(const std::shared_ptr<Attachment>& att,
                                           Grant g,
                                           SequenceHash h) {
    WeakBlock w;
    w.att_ = att;
    w.id_ = g.slot;
    w.gen_ = g.generation;
    w.hash_ = h;
    return w;
  }
  static Attachment* attachment(const CompleteBlock& b) { return b.att_.get(); }
  static Grant grant(const CompleteBlock& b) { return Grant{b.id_, b.gen_}; }

 private:
  static void fill(MutableBlock& b, const std::shared_ptr<Attachment>& att, Grant g) {
    b.att_ = att;
    b.id_ = g.slot;
    b.gen_ = g.generation;
  }
  static void fill(ImmutableBlock& b, Attachment* att, Grant g, SequenceHash h) {
    b.att_ = att;
    b.id_ = g.slot;
    b.gen_ = g.generation;
    b.hash_ = h;
  }
};

}  // namespace kvbm::detail
