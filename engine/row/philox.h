// The engine's one source of randomness: Philox4x32-10 (Random123) keyed by
// the row's seed, counter = (step, sample index, purpose). Nothing about the
// batch ever enters the key or the counter (SPEC section 5).
#pragma once

#include <Random123/philox.h>
#include <Random123/u01fixedpt.h>

#include <cstdint>

namespace nucleus::detail {

// What a uniform is for; part of the counter, so each purpose has its own
// stream.
enum Purpose : uint32_t {
  kDrawPurpose = 0,     // the token draw
  kAcceptPurpose = 1,   // speculative decoding: accept or reject a draft token
  kRecoverPurpose = 2,  // speculative decoding: the token drawn after a rejection
};

// One uniform in (0, 1] with 53 random bits: output words 0 (high half) and 1
// (low half) make one 64-bit integer.
inline double philox_uniform(uint64_t seed, uint64_t step, uint32_t sample, uint32_t purpose) {
  r123::Philox4x32 rng;
  const r123::Philox4x32::key_type key = {
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  const r123::Philox4x32::ctr_type ctr = {
      {static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), sample, purpose}};
  const r123::Philox4x32::ctr_type out = rng(ctr, key);
  const uint64_t bits = (static_cast<uint64_t>(out[0]) << 32) | out[1];
  return u01fixedpt_open_closed_64_double(bits);
}

}  // namespace nucleus::detail
