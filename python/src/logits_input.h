// Turns a Python logits object (numpy array, any buffer-protocol object, or a
// DLPack producer such as a PyTorch CPU tensor) into a nucleus::LogitsView,
// without copying whenever the layout allows it.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "nucleus/sampling.h"

namespace nucleus::python {

// The logits of one call, borrowed from (or, when the layout or dtype cannot
// be used as it is, converted from) a Python object. Holds the buffer or the
// DLPack capsule for as long as it lives, so the view stays valid while the
// GIL is released. Create and destroy with the GIL held.
class LogitsInput {
 public:
  // `what` names the argument in error messages. `as_bfloat16` reinterprets a
  // 2-byte integer or float16 buffer as bfloat16 bits. `min_ndim` is the
  // fewest axes accepted (the last one is the vocabulary; the leading ones
  // flatten into rows). Throws TypeError or ValueError.
  static LogitsInput from_object(pybind11::handle object, const char* what, bool as_bfloat16,
                                 int min_ndim = 1);

  LogitsInput(LogitsInput&& other) noexcept;
  LogitsInput& operator=(LogitsInput&&) = delete;
  LogitsInput(const LogitsInput&) = delete;
  LogitsInput& operator=(const LogitsInput&) = delete;
  ~LogitsInput();

  const LogitsView& view() const { return view_; }
  // The shape as given (the last axis is the vocabulary).
  const std::vector<int64_t>& shape() const { return shape_; }
  // True when the input had to be converted or copied first.
  bool copied() const { return copied_; }
  // "buffer", "dlpack" or "numpy" (converted through numpy.asarray).
  const char* source() const { return source_; }

 private:
  LogitsInput() = default;

  Py_buffer buffer_{};
  bool has_buffer_ = false;
  pybind11::object keep_alive_;  // a DLPack capsule or a converted array
  LogitsView view_;
  std::vector<int64_t> shape_;
  bool copied_ = false;
  const char* source_ = "buffer";
};

// Whether a strided tensor can be read (or written) row by row as it is:
// every row contiguous, the rows a uniform stride apart (the leading axes
// collapse into one), the elements aligned. Sets the row count and the row
// stride in elements. `shape` has at least one axis; strides are in bytes.
bool row_layout(const void* data, int64_t itemsize, const std::vector<int64_t>& shape,
                const std::vector<int64_t>& strides, int64_t* rows, int64_t* row_stride);

// Parses the `logits_dtype` keyword: None, or "bf16" / "bfloat16".
bool parse_logits_dtype(pybind11::handle value);

}  // namespace nucleus::python
