// libFuzzer entry point; the target itself is in fuzz/dump_targets.h.
#include <cstddef>
#include <cstdint>

#include "fuzz/dump_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return nucleus::fuzz::FuzzHeaderDump(nucleus::DumpFormat::kSafetensors, data, size);
}
