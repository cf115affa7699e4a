// libFuzzer target: the safetensors header parser on arbitrary bytes. Inputs starting with '{' are
// taken as header JSON and wrapped in a well-formed file (length prefix + a zero data section), so
// the fuzzer spends its time past the length check; anything else is a whole file.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using deepshard::model::safetensors::parse_header;
    std::string file;
    if (size > 0 && data[0] == '{') {
        file.assign(8, '\0');
        for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((static_cast<uint64_t>(size) >> (8 * i)) & 0xff);
        file.append(reinterpret_cast<const char*>(data), size);
        file.append(1 << 16, '\0');
    } else {
        file.assign(reinterpret_cast<const char*>(data), size);
    }
    auto h = parse_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), "fuzz.safetensors");
    if (h.ok()) {
        // What the parser promises: every tensor lies inside the file, sized by its shape, no overlap.
        uint64_t prev_end = 0;
        for (const auto& e : h->tensors) {
            if (h->data_start + e.end > file.size() || e.begin > e.end)
                std::abort();
            if (e.end - e.begin != static_cast<uint64_t>(e.numel()) * deepshard::dtype_size(e.dtype))
                std::abort();
            if (e.begin != e.end && e.begin < prev_end)
                std::abort();
            if (e.begin != e.end)
                prev_end = e.end;
        }
    }
    return 0;
}
