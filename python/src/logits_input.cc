#include "logits_input.h"

#include <pybind11/numpy.h>

#include <cstring>
#include <string>
#include <utility>

#include "requests.h"

namespace nucleus::python {
namespace py = pybind11;
namespace {

// The DLPack ABI (dmlc/dlpack, include/dlpack/dlpack.h, v0.8). Only the
// unversioned "dltensor" capsule is consumed: `__dlpack__()` called without
// `max_version` returns it from every producer (PyTorch, numpy, JAX, CuPy).
struct DLDevice {
  int32_t device_type;  // DLDeviceType, a C enum (int-sized)
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // DLDataTypeCode
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDAHost = 3;  // pinned host memory: readable by the CPU
constexpr uint8_t kDLInt = 0;
constexpr uint8_t kDLUInt = 1;
constexpr uint8_t kDLFloat = 2;
constexpr uint8_t kDLBfloat = 4;

const char* device_name(int32_t type) {
  switch (type) {
    case 2:
      return "CUDA";
    case 4:
      return "OpenCL";
    case 7:
      return "Vulkan";
    case 8:
      return "Metal";
    case 10:
      return "ROCm";
    case 13:
      return "CUDA managed";
    default:
      return "non-CPU";
  }
}

// A strided tensor in host memory, as the buffer protocol or DLPack
// describes it.
struct Strided {
  const char* data = nullptr;
  std::optional<DType> dtype;  // none: not a type the engine reads
  int64_t itemsize = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in bytes
};

void gather(const Strided& t, size_t axis, const char* src, char** dst) {
  if (axis + 1 == t.shape.size()) {
    for (int64_t i = 0; i < t.shape[axis]; ++i) {
      std::memcpy(*dst, src + i * t.strides[axis], static_cast<size_t>(t.itemsize));
      *dst += t.itemsize;
    }
    return;
  }
  for (int64_t i = 0; i < t.shape[axis]; ++i) gather(t, axis + 1, src + i * t.strides[axis], dst);
}

// A C-contiguous copy of `t` (bfloat16 as uint16 bit patterns).
py::array contiguous_copy(const Strided& t) {
  py::dtype dtype = *t.dtype == DType::kFloat32   ? py::dtype::of<float>()
                    : *t.dtype == DType::kFloat16 ? py::dtype("float16")
                                                  : py::dtype::of<uint16_t>();
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  py::array out(dtype, shape);
  if (out.size() > 0) {
    char* dst = static_cast<char*>(out.mutable_data());
    gather(t, 0, t.data, &dst);
  }
  return out;
}

std::optional<DType> buffer_dtype(const Py_buffer& buffer, bool as_bfloat16) {
  std::string format = buffer.format != nullptr ? buffer.format : "B";
  if (!format.empty() && (format[0] == '@' || format[0] == '=' || format[0] == '<')) {
    format.erase(0, 1);  // native or little-endian, which is native here
  }
  if (as_bfloat16) {
    // (2-byte integers only: float16 values are not bfloat16 bits, and read
    // as such they were silently wrong)
    if (buffer.itemsize == 2 && (format == "H" || format == "h")) {
      return DType::kBFloat16;
    }
    return std::nullopt;
  }
  if (format == "f" && buffer.itemsize == 4) return DType::kFloat32;
  if (format == "e" && buffer.itemsize == 2) return DType::kFloat16;
  return std::nullopt;
}

std::optional<DType> dlpack_dtype(const DLDataType& type, bool as_bfloat16) {
  if (type.lanes != 1) return std::nullopt;
  if (as_bfloat16) {
    if (type.bits == 16 &&
        (type.code == kDLBfloat || type.code == kDLUInt || type.code == kDLInt)) {
      return DType::kBFloat16;
    }
    return std::nullopt;
  }
  if (type.code == kDLFloat && type.bits == 32) return DType::kFloat32;
  if (type.code == kDLFloat && type.bits == 16) return DType::kFloat16;
  if (type.code == kDLBfloat && type.bits == 16) return DType::kBFloat16;
  return std::nullopt;
}

std::string type_name(py::handle object) {
  return py::str(py::type::handle_of(object).attr("__name__")).cast<std::string>();
}

void check_ndim(size_t ndim, int min_ndim, const char* what) {
  if (static_cast<int>(ndim) < min_ndim) {
    throw py::value_error(std::string(what) + ": expected at least " + std::to_string(min_ndim) +
                          (min_ndim == 1 ? " axis" : " axes") + ", got " + std::to_string(ndim));
  }
}

}  // namespace

bool row_layout(const void* data, int64_t itemsize, const std::vector<int64_t>& shape,
                const std::vector<int64_t>& strides, int64_t* rows, int64_t* row_stride) {
  const size_t ndim = shape.size();
  const int64_t vocab = shape.back();
  *rows = 1;
  for (size_t i = 0; i + 1 < ndim; ++i) *rows *= shape[i];
  *row_stride = vocab;
  if (*rows == 0 || vocab == 0) return true;  // the engine reports the empty batch
  if (reinterpret_cast<uintptr_t>(data) % static_cast<uintptr_t>(itemsize) != 0) {
    return false;
  }
  if (vocab > 1 && strides.back() != itemsize) return false;
  // Walk the leading axes from the innermost outwards; axes of length 1 have
  // no meaningful stride and are skipped.
  bool found = false;
  int64_t inner = 0;  // the stride, in bytes, of the innermost leading axis of length > 1
  int64_t expected = 0;
  for (size_t i = ndim - 1; i-- > 0;) {
    if (shape[i] == 1) continue;
    if (!found) {
      found = true;
      inner = strides[i];
    } else if (strides[i] != expected) {
      return false;
    }
    expected = strides[i] * shape[i];
  }
  if (!found) return true;  // a single row
  if (inner <= 0 || inner % itemsize != 0 || inner / itemsize < vocab) return false;
  *row_stride = inner / itemsize;
  return true;
}

bool parse_logits_dtype(py::handle value) {
  if (value.is_none()) return false;
  if (py::isinstance<py::str>(value)) {
    const std::string name = value.cast<std::string>();
    if (name == "bf16" || name == "bfloat16") return true;
    throw py::value_error("logits_dtype: '" + name +
                          "' is not supported; only 'bf16' (or 'bfloat16') reinterprets "
                          "uint16 bit patterns, other dtypes are read from the input");
  }
  throw py::type_error("logits_dtype: expected None or 'bf16', got " + type_name(value));
}

LogitsInput::LogitsInput(LogitsInput&& other) noexcept
    : buffer_(other.buffer_),
      has_buffer_(std::exchange(other.has_buffer_, false)),
      keep_alive_(std::move(other.keep_alive_)),
      view_(other.view_),
      shape_(std::move(other.shape_)),
      copied_(other.copied_),
      source_(other.source_) {}

LogitsInput::~LogitsInput() {
  if (has_buffer_) PyBuffer_Release(&buffer_);
}

LogitsInput LogitsInput::from_object(py::handle object, const char* what, bool as_bfloat16,
                                     int min_ndim) {
  LogitsInput in;
  Strided t;

  // 1. The buffer protocol: numpy arrays, memoryviews, array.array, ...
  const bool has_buffer = PyObject_CheckBuffer(object.ptr()) != 0;
  if (has_buffer) {
    if (PyObject_GetBuffer(object.ptr(), &in.buffer_, PyBUF_RECORDS_RO) == 0) {
      in.has_buffer_ = true;
      t.dtype = buffer_dtype(in.buffer_, as_bfloat16);
      if (t.dtype) {
        check_ndim(static_cast<size_t>(in.buffer_.ndim), min_ndim, what);
        t.data = static_cast<const char*>(in.buffer_.buf);
        t.itemsize = in.buffer_.itemsize;
        for (int i = 0; i < in.buffer_.ndim; ++i) t.shape.push_back(in.buffer_.shape[i]);
        if (in.buffer_.strides != nullptr) {
          t.strides.assign(in.buffer_.strides, in.buffer_.strides + in.buffer_.ndim);
        } else {
          // No strides: C-contiguous (ctypes arrays export them so).
          t.strides.resize(t.shape.size());
          int64_t compact = t.itemsize;
          for (size_t i = t.shape.size(); i-- > 0;) {
            t.strides[i] = compact;
            compact *= t.shape[i];
          }
        }
      } else {
        PyBuffer_Release(&in.buffer_);
        in.has_buffer_ = false;
      }
    } else {
      PyErr_Clear();  // e.g. a non-strided exporter: numpy below may still read it
    }
  }

  // 2. DLPack: PyTorch CPU tensors (bfloat16 included), JAX, CuPy host arrays.
  // An object that has a buffer but not one the engine reads (float64,
  // big-endian) goes straight to numpy, which converts what DLPack refuses.
  if (!t.dtype && !has_buffer && has_attr(object, "__dlpack__")) {
    py::object capsule = object.attr("__dlpack__")();
    if (PyCapsule_IsValid(capsule.ptr(), "dltensor") == 0) {
      throw py::type_error(std::string(what) +
                           ": __dlpack__() did not return an unconsumed 'dltensor' capsule");
    }
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
    const DLTensor& dl = managed->dl_tensor;
    if (dl.device.device_type != kDLCPU && dl.device.device_type != kDLCUDAHost) {
      throw py::value_error(std::string(what) + ": the tensor is on a " +
                            device_name(dl.device.device_type) +
                            " device; nucleus samples on the CPU (move it there first, e.g. "
                            "tensor.cpu())");
    }
    t.dtype = dlpack_dtype(dl.dtype, as_bfloat16);
    if (t.dtype) {
      check_ndim(static_cast<size_t>(dl.ndim), min_ndim, what);
      t.itemsize = dl.dtype.bits / 8;
      t.data = static_cast<const char*>(dl.data) + dl.byte_offset;
      t.shape.assign(dl.shape, dl.shape + dl.ndim);
      t.strides.resize(static_cast<size_t>(dl.ndim));
      int64_t compact = t.itemsize;
      for (int i = dl.ndim - 1; i >= 0; --i) {
        t.strides[i] = dl.strides != nullptr ? dl.strides[i] * t.itemsize : compact;
        compact *= dl.shape[i];
      }
      // The capsule is not renamed: it keeps ownership, and its destructor
      // (the producer's) calls the deleter when the call is over.
      in.keep_alive_ = std::move(capsule);
      in.source_ = "dlpack";
    }
  }

  // 3. Anything numpy can convert: other dtypes become float32.
  if (!t.dtype) {
    py::module_ numpy = py::module_::import("numpy");
    py::array array;
    try {
      array = numpy_array(object);
    } catch (py::error_already_set& e) {
      // (numpy's ValueError, a ragged list's, stays one: the values are of
      // a type it reads, in a shape it cannot make)
      const std::string message = std::string(what) + ": cannot read a " + type_name(object) +
                                  " as logits (" + e.what() + ")";
      if (e.matches(PyExc_ValueError)) throw py::value_error(message);
      throw py::type_error(message);
    }
    const char kind = array.dtype().kind();
    // (the type before the shape: bytes or an opaque object is a 0-d array
    // of strings or objects, a TypeError, not one of too few axes)
    if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b') {
      throw py::type_error(std::string(what) + ": dtype " +
                           py::str(array.dtype()).cast<std::string>() + " (of a " +
                           type_name(object) +
                           ") is not supported (float32, float16, bfloat16, or a real dtype "
                           "that converts to float32)");
    }
    // (before the conversion below, which makes a 0-d array, a bare number,
    // one of 1 axis)
    check_ndim(static_cast<size_t>(array.ndim()), min_ndim, what);
    py::object converted;
    if (as_bfloat16) {
      if (array.itemsize() != 2 || (kind != 'u' && kind != 'i')) {
        throw py::type_error(std::string(what) +
                             ": logits_dtype='bf16' needs 2-byte integers (bfloat16 bit "
                             "patterns as uint16), got " +
                             py::str(array.dtype()).cast<std::string>() +
                             (kind == 'f' && array.itemsize() == 2
                                  ? " (float16 values: leave logits_dtype out to read them)"
                                  : ""));
      }
      // (in native byte order first: a big-endian array's bytes viewed as
      // uint16 would be swapped patterns)
      const py::object native = array.attr("astype")(array.dtype().attr("newbyteorder")("="));
      converted = numpy.attr("ascontiguousarray")(native).attr("view")(numpy.attr("uint16"));
    } else {
      converted = numpy.attr("ascontiguousarray")(array, numpy.attr("float32"));
    }
    LogitsInput inner = from_object(converted, what, as_bfloat16, min_ndim);
    inner.keep_alive_ = std::move(converted);
    inner.copied_ = true;
    inner.source_ = "numpy";
    return inner;
  }

  int64_t rows = 0;
  int64_t row_stride = 0;
  if (!row_layout(t.data, t.itemsize, t.shape, t.strides, &rows, &row_stride)) {
    py::array copy = contiguous_copy(t);
    if (in.has_buffer_) {
      PyBuffer_Release(&in.buffer_);
      in.has_buffer_ = false;
    }
    t.data = static_cast<const char*>(copy.data());
    int64_t compact = t.itemsize;
    for (size_t i = t.shape.size(); i-- > 0;) {
      t.strides[i] = compact;
      compact *= t.shape[i];
    }
    row_layout(t.data, t.itemsize, t.shape, t.strides, &rows, &row_stride);
    in.keep_alive_ = std::move(copy);
    in.copied_ = true;
  }
  in.shape_ = t.shape;
  in.view_ = LogitsView{t.data, rows, t.shape.back(), row_stride, *t.dtype};
  return in;
}

}  // namespace nucleus::python
