// libFuzzer entry point; the target itself is in fuzz/engine_targets.h.
#include <cstddef>
#include <cstdint>

#include "fuzz/engine_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return nucleus::fuzz::FuzzVerify(data, size);
}
