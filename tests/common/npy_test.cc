#include "common/npy.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>

namespace deepshard {
namespace {

TEST(NpyTest, WriteThenReadRoundTrips) {
    std::string path = testing::TempDir() + "/x.npy";
    std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
    ASSERT_TRUE(write_npy_f32(path, {2, 3}, v.data()).ok());
    auto r = read_npy_f32(path);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_EQ(r->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(r->data, v);
}

TEST(NpyTest, RejectsTruncatedFile) {
    std::string path = testing::TempDir() + "/t.npy";
    std::vector<float> v(100, 1.0f);
    ASSERT_TRUE(write_npy_f32(path, {100}, v.data()).ok());
    ASSERT_EQ(truncate(path.c_str(), 200), 0);
    auto r = read_npy_f32(path);
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace deepshard
