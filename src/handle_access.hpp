// SPDX-License-Identifier: Apache-2.0
// HandleAccess: how the library builds and takes apart the public block guards. A handle made
// here owns exactly what the store already granted (an exclusive slot, or one local count of a
// held slot); nothing here touches shared memory.
#pragma once

#include <memory>

#include "kvbm/blocks.hpp"

#include "attachment.hpp"

namespace kvbm::detail {

struct HandleAccess {
  static MutableBlock make_mutable(const std::shared_ptr<Attachment>& att, Grant g) {
    MutableBlock b;
    b.att_ = att;
    b.id_ = g.slot;
    b.gen_ = g.generation;
    return b;
  }
  static CompleteBlock make_complete(std::shared_ptr<Attachment> att, Grant g, SequenceHash h) {
    CompleteBlock b;
    b.att_ = std::move(att);
    b.id_ = g.slot;
    b.gen_ = g.generation;
    b.hash_ = h;
    return b;
  }
  /// Requires: the local count of g.slot was already incremented for this handle.
  static ImmutableBlock make_immutable(const std::shared_ptr<Attachment>& att,
                                       Grant g,
                                       SequenceHash h) {
    ImmutableBlock b;
    b.att_ = att;
    b.id_ = g.slot;
    b.gen_ = g.generation;
    b.hash_ = h;
    return b;
  }
  static WeakBlock make_weak(const std::shared_ptr<Attachment>& att, Grant g, SequenceHash h) {
    WeakBlock w;
    w.att_ = att;
    w.id_ = g.slot;
    w.gen_ = g.generation;
    w.hash_ = h;
    return w;
  }
  /// Moves a registered CompleteBlock's attachment reference into its ImmutableBlock (no count
  /// change). Requires: the local count of g.slot was already incremented for the new handle.
  static ImmutableBlock immutable_from(CompleteBlock& b, Grant g) {
    ImmutableBlock out;
    out.att_ = std::move(b.att_);
    out.id_ = g.slot;
    out.gen_ = g.generation;
    out.hash_ = b.hash_;
    return out;
  }
  static Attachment* attachment(const CompleteBlock& b) { return b.att_.get(); }
  static Grant grant(const CompleteBlock& b) { return Grant{b.id_, b.gen_}; }
};

}  // namespace kvbm::detail
