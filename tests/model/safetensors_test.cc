// safetensors container: write/parse round trip of every dtype, the writer's layout, and every
// header defect the parser must turn into an error naming the file and the tensor.
#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/mapped_file.h"
#include "tests/model/loader_test_util.h"

namespace deepshard::model::safetensors {
namespace {

using test::TempDir;

// A file image: 8-byte length, the given header text, then `data_bytes` zero bytes.
std::string image(const std::string& header, size_t data_bytes) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    return out + header + std::string(data_bytes, '\0');
}

StatusOr<Header> parse(const std::string& img) {
    return parse_header(reinterpret_cast<const uint8_t*>(img.data()), img.size(), "shard.safetensors");
}

void expect_error(const std::string& img, const std::vector<std::string>& needles) {
    auto h = parse(img);
    ASSERT_FALSE(h.ok()) << "accepted a defective header";
    EXPECT_NE(h.status().message().find("shard.safetensors"), std::string::npos) << h.status().message();
    for (const auto& n : needles) {
        EXPECT_NE(h.status().message().find(n), std::string::npos) << "'" << n << "' not in: " << h.status().message();
    }
}

TEST(Safetensors, RoundTripsEveryDtype) {
    TempDir tmp;
    std::vector<float> f32 = {1.5f, -2.25f, 3e-8f, 65504.f, -0.f, 7.f};
    std::vector<uint16_t> bf16 = {f32_to_bf16(1.f), f32_to_bf16(-3.5f), f32_to_bf16(1e20f), f32_to_bf16(0.125f)};
    std::vector<uint16_t> f16 = {f32_to_f16(0.5f), f32_to_f16(-1024.f), f32_to_f16(6e-5f)};
    std::vector<uint8_t> f8 = {0x00, 0x7e, 0xfe, 0x01, 0x38, 0xb8, 0x40};  // odd byte count
    std::vector<int32_t> i32 = {-7, 1 << 30};
    std::vector<TensorSpec> specs = {{"a.f32", DType::kF32, {2, 3}}, {"b.bf16", DType::kBF16, {4}},
                                     {"c.f16", DType::kF16, {3, 1}}, {"d.f8", DType::kF8E4M3, {7, 1}},
                                     {"e.i32", DType::kI32, {2}},    {"f.empty", DType::kF32, {0, 5}}};
    std::vector<const void*> data = {f32.data(), bf16.data(), f16.data(), f8.data(), i32.data(), nullptr};
    ASSERT_TRUE(write_file(tmp.sub("x.safetensors"), specs, data).ok());

    auto mf = MappedFile::open(tmp.sub("x.safetensors"));
    ASSERT_TRUE(mf.ok());
    auto h = parse_header(mf->data(), mf->size(), "x.safetensors");
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    EXPECT_EQ(h->data_start % 8, 0u) << "header must be padded to a multiple of 8";
    EXPECT_EQ(h->metadata.at("format"), "pt");
    ASSERT_EQ(h->tensors.size(), specs.size());
    std::map<std::string, const TensorEntry*> by;
    for (const auto& e : h->tensors) by[e.name] = &e;
    for (size_t i = 0; i < specs.size(); ++i) {
        const TensorEntry& e = *by.at(specs[i].name);
        EXPECT_EQ(e.dtype, specs[i].dtype) << e.name;
        EXPECT_EQ(e.shape, specs[i].shape) << e.name;
        ASSERT_EQ(e.end - e.begin, specs[i].nbytes()) << e.name;
        if (specs[i].nbytes() > 0) {
            EXPECT_EQ(std::memcmp(mf->data() + h->data_start + e.begin, data[i], specs[i].nbytes()), 0) << e.name;
        }
    }
    // The data section is contiguous in header order, as the reference writer lays it out.
    EXPECT_EQ(by.at("a.f32")->begin, 0u);
    EXPECT_EQ(by.at("b.bf16")->begin, 24u);
    EXPECT_EQ(mf->size(), h->data_start + 24 + 8 + 6 + 7 + 8);
}

TEST(Safetensors, AcceptsAHandWrittenHeader) {
    const std::string hdr =
        R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]},)"
        R"("s":{"dtype":"F32","shape":[1,1],"data_offsets":[4,8]}}   )";
    auto h = parse(image(hdr, 8));
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    ASSERT_EQ(h->tensors.size(), 2u);
    EXPECT_EQ(h->tensors[0].name, "w");  // sorted by offset
    EXPECT_EQ(h->tensors[1].begin, 4u);
}

TEST(Safetensors, RejectsShortFile) {
    expect_error(std::string("\x10\x00\x00", 3), {"too short"});
    expect_error("", {"too short"});
}

TEST(Safetensors, RejectsHeaderLengthPastEndOfFile) {
    std::string img = image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
    img[0] = '\xff';
    img[5] = '\x01';
    expect_error(img, {"header length", "past the end of the file"});
}

TEST(Safetensors, RejectsMalformedJson) {
    expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4), {"malformed header"});
    expect_error(image(R"(["a"])", 0), {"not a JSON object"});
    expect_error(image(std::string(40, '[') + std::string(40, ']'), 0), {"nested"});
    expect_error(image(R"({"a":[1,2]})", 0), {"'a'", "not an object"});
    expect_error(image(R"({"__metadata__":3})", 0), {"__metadata__"});
}

TEST(Safetensors, RejectsBadEntries) {
    expect_error(image(R"({"w.x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8), {"'w.x'", "F64"});
    expect_error(image(R"({"w.x":{"shape":[1],"data_offsets":[0,4]}})", 4), {"'w.x'", "dtype"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), {"'w.x'", "shape"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), {"'w.x'", "shape"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})", 4),
                 {"'w.x'", "too large"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), {"'w.x'", "data_offsets"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 4), {"'w.x'", "reversed"});
    expect_error(image(R"({"w.x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8), {"'w.x'", "needs 8"});
}

TEST(Safetensors, RejectsOffsetsOutOfRange) {
    // Offsets past the data section: a truncated file looks exactly like this.
    const std::string hdr = R"({"w.x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
    expect_error(image(hdr, 12), {"'w.x'", "past the end of the data", "truncated"});
    expect_error(
        image(R"({"w.x":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551616]}})", 4),
        {"'w.x'"});
}

TEST(Safetensors, RejectsOverlappingTensors) {
    const std::string hdr = R"({"a.w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b.w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    expect_error(image(hdr, 12), {"'b.w'", "overlap", "'a.w'"});
    // Empty tensors never overlap anything.
    const std::string ok = R"({"a.w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
    EXPECT_TRUE(parse(image(ok, 8)).ok());
}

TEST(Safetensors, PlanFileMatchesParse) {
    std::vector<TensorSpec> specs = {{"z", DType::kBF16, {3}}, {"a", DType::kF8E4M3, {5}}};
    FileLayout l = plan_file(specs, {{"format", "pt"}});
    EXPECT_EQ((l.header.size()) % 8, 0u);
    EXPECT_EQ(l.offsets[0], l.header.size());
    EXPECT_EQ(l.offsets[1], l.header.size() + 6);
    EXPECT_EQ(l.file_size, l.header.size() + 11);
    std::string img = l.header + std::string(11, '\0');
    auto h = parse(img);
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    EXPECT_EQ(h->tensors[0].name, "z");  // data order = given order, not name order
}

}  // namespace
}  // namespace deepshard::model::safetensors
