// The per-row requests of one Python call, parsed from its keyword
// arguments: each takes one value for every row or one value per row.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nucleus/sampling.h"

namespace nucleus::python {

enum class CallKind {
  kSample,  // every keyword
  kProbs,   // no draw keywords (n, logprobs, logprobs_mode)
  kVerify,  // no draw keywords
};

// The keywords `kind` accepts, in the order the documentation lists them.
const std::vector<const char*>& keyword_names(CallKind kind);

// True and False (Python's or numpy's), which are not numbers to this module:
// `logprobs=True` (the OpenAI API's flag) would otherwise ask for one top
// log-probability, `Engine(threads=True)` one thread.
bool is_boolean(pybind11::handle v);

// Integers only (Python's, numpy's, anything with __index__; not bool, not
// a float such as 50.0, which is refused rather than truncated), as the
// argument `where` names: TypeError for another type, ValueError for a
// value outside the result's range.
pybind11::object to_index(pybind11::handle v, const std::string& where);
int64_t to_int64(pybind11::handle v, const std::string& where);
int32_t to_int32(pybind11::handle v, const std::string& where);
uint64_t to_uint64(pybind11::handle v, const std::string& where);
// numpy.asarray(v) (numpy.from_dlpack(v) for an object that offers DLPack
// alone); as_array(v, where) the same, with a ValueError numpy raises (a
// ragged list) named by `where`.
pybind11::array numpy_array(pybind11::handle v);
pybind11::array as_array(pybind11::handle v, const std::string& where);

// Whether `v` has the attribute `name`, without the AttributeError that
// pybind11's hasattr (PyObject_GetAttrString) makes and formats for an
// object that lacks it: ~0.3 us each, three for every scalar parameter of
// a call (PyObject_HasAttr looks the name up without raising).
inline bool has_attr(pybind11::handle v, const char* name) {
  const pybind11::str key(name);
  return PyObject_HasAttr(v.ptr(), key.ptr()) == 1;
}
// The first value of an unsigned 64-bit integer array that int64 cannot hold
// (read as int64 it would wrap to a negative number), if any; nullopt for
// other arrays.
std::optional<uint64_t> first_past_int64(const pybind11::array& a);

class RequestTable {
 public:
  // Parses `kwargs` for a batch of `rows` rows of `vocab` tokens. Throws
  // TypeError for an unknown keyword or a value of the wrong type, and
  // ValueError for a per-row value whose length is not `rows` or a number
  // that does not fit its field.
  static RequestTable from_kwargs(const pybind11::dict& kwargs, int64_t rows, int64_t vocab,
                                  CallKind kind, const char* function);

  // Throws ValueError for a request the engine would refuse (its own check,
  // the message naming the row, this module's keyword and the value): called
  // just before the engine, so other arguments' errors come first as before.
  void check(int64_t vocab) const;

  std::span<const RowRequest> requests() const { return requests_; }
  int32_t max_samples() const { return max_samples_; }
  int32_t max_top_logprobs() const { return max_top_logprobs_; }

 private:
  std::vector<RowRequest> requests_;
  // What the requests' spans point to. An inner vector's buffer does not move
  // when the outer vector grows, so the spans stay valid.
  std::vector<std::vector<int32_t>> tokens_;
  std::vector<std::vector<TokenBias>> biases_;
  int32_t max_samples_ = 1;
  int32_t max_top_logprobs_ = 0;

  friend class RequestParser;
};

}  // namespace nucleus::python
