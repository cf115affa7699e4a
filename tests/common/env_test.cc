// Environment knobs read their default from the one table in common/env.cc.
#include "common/env.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace deepshard {
namespace {

std::string table_default(const char* name) {
    for (const auto& k : env_knobs()) {
        if (std::strcmp(k.name, name) == 0) {
            return k.default_value;
        }
    }
    return "";
}

TEST(EnvTest, CommTimeoutDefaultComesFromTheTable) {
    unsetenv("DS_COMM_TIMEOUT_MS");
    EXPECT_EQ(comm_timeout().count(), std::stoll(table_default("DS_COMM_TIMEOUT_MS")));
    setenv("DS_COMM_TIMEOUT_MS", "1234", 1);
    EXPECT_EQ(comm_timeout().count(), 1234);
    // Non-positive or unparsable values fall back to the table's default, not to 0.
    setenv("DS_COMM_TIMEOUT_MS", "-5", 1);
    EXPECT_EQ(comm_timeout().count(), std::stoll(table_default("DS_COMM_TIMEOUT_MS")));
    setenv("DS_COMM_TIMEOUT_MS", "12x", 1);
    EXPECT_EQ(comm_timeout().count(), std::stoll(table_default("DS_COMM_TIMEOUT_MS")));
    unsetenv("DS_COMM_TIMEOUT_MS");
}

TEST(EnvTest, TypedReadersUseTheTableDefaults) {
    unsetenv("DS_LOG_LEVEL");
    EXPECT_EQ(env_str("DS_LOG_LEVEL"), table_default("DS_LOG_LEVEL"));
    unsetenv("DS_HEARTBEAT_MS");
    EXPECT_EQ(heartbeat_period().count(), std::stoll(table_default("DS_HEARTBEAT_MS")));
    setenv("DS_HEARTBEAT_MS", "1", 1);
    EXPECT_EQ(heartbeat_period().count(), 10);  // floor: a 1 ms heartbeat would flood the link
    unsetenv("DS_HEARTBEAT_MS");
}

TEST(EnvTest, EveryDefaultParsesAsItsType) {
    // env_int aborts on a table default that is not an integer: keep the table honest.
    for (const auto& k : env_knobs()) {
        EXPECT_NE(k.default_value, nullptr) << k.name;
        EXPECT_NE(std::string(k.help), "") << k.name;
    }
    EXPECT_GE(env_int("DS_COMM_SPIN_US"), 0);
}

}  // namespace
}  // namespace deepshard
