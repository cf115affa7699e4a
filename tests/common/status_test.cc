#include "common/status.h"

#include <gtest/gtest.h>

namespace deepshard {
namespace {

StatusOr<int> parse_positive(int v) {
    if (v <= 0) {
        return invalid_argument("value must be positive, got " + std::to_string(v));
    }
    return v;
}

Status twice(int v, int* out) {
    DS_ASSIGN_OR_RETURN(int x, parse_positive(v));
    *out = 2 * x;
    return ok_status();
}

TEST(StatusTest, PropagatesErrorsAndValues) {
    int out = 0;
    EXPECT_TRUE(twice(4, &out).ok());
    EXPECT_EQ(out, 8);
    Status s = twice(-1, &out);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("-1"), std::string::npos);
    EXPECT_EQ(s.with_context("loading").message(), "loading: " + s.message());
    EXPECT_EQ(s.to_string().rfind("InvalidArgument:", 0), 0u);
}

TEST(StatusTest, CheckAbortsWithMessage) {
    EXPECT_DEATH({ DS_CHECK(1 == 2) << "custom detail"; }, "check failed: 1 == 2 custom detail");
}

}  // namespace
}  // namespace deepshard
