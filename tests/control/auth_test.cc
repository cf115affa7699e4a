// The control secret's file rules and the challenge-response MACs.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/secret_file.h"
#include "control/auth.h"
#include "tests/util/subprocess.h"

namespace deepshard::control {
namespace {

namespace fs = std::filesystem;

class SecretFileTest : public ::testing::Test {
protected:
    void SetUp() override { dir_ = testing_util::make_temp_dir("ds_auth_test"); }
    void TearDown() override { fs::remove_all(dir_); }
    std::string dir_;
};

TEST_F(SecretFileTest, WrittenOwnerOnlyReadBackAndNeverOverwritten) {
    const std::string path = dir_ + "/s";
    ASSERT_TRUE(write_new_secret_file(path).ok());
    struct stat st {};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    auto s = read_control_secret_file(path);
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    EXPECT_EQ(s->size(), 64u);
    // Two files never share a secret; an existing file is not replaced.
    ASSERT_TRUE(write_new_secret_file(dir_ + "/t").ok());
    EXPECT_NE(*read_control_secret_file(dir_ + "/t"), *s);
    EXPECT_FALSE(write_new_secret_file(path).ok());
    EXPECT_EQ(*read_control_secret_file(path), *s);
}

TEST_F(SecretFileTest, RefusesFilesOthersCanReadLinksAndShortSecrets) {
    const std::string path = dir_ + "/s";
    ASSERT_TRUE(write_new_secret_file(path).ok());
    ::chmod(path.c_str(), 0644);
    auto s = read_control_secret_file(path);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("mode 0644"), std::string::npos) << s.status().message();
    EXPECT_NE(s.status().message().find("chmod 600"), std::string::npos);
    ::chmod(path.c_str(), 0600);

    fs::create_symlink(path, dir_ + "/link");
    EXPECT_FALSE(read_control_secret_file(dir_ + "/link").ok());
    EXPECT_FALSE(read_control_secret_file(dir_).ok());  // a directory
    auto missing = read_control_secret_file(dir_ + "/none");
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

    ASSERT_TRUE(write_secret_file(dir_ + "/short", "abc\n").ok());
    auto shorty = read_control_secret_file(dir_ + "/short");
    ASSERT_FALSE(shorty.ok());
    EXPECT_NE(shorty.status().message().find("at least 16"), std::string::npos) << shorty.status().message();
}

TEST_F(SecretFileTest, LoadOrderFlagThenFileEnvThenValueEnv) {
    unsetenv("DS_CONTROL_SECRET_FILE");
    unsetenv("DS_CONTROL_SECRET");
    EXPECT_EQ(load_control_secret("").status().code(), StatusCode::kNotFound);
    setenv("DS_CONTROL_SECRET", "value-from-the-environment-0123", 1);
    EXPECT_EQ(*load_control_secret(""), "value-from-the-environment-0123");
    ASSERT_TRUE(write_secret_file(dir_ + "/f", "secret-from-the-file-0123456789\n").ok());
    setenv("DS_CONTROL_SECRET_FILE", (dir_ + "/f").c_str(), 1);
    EXPECT_EQ(*load_control_secret(""), "secret-from-the-file-0123456789");
    ASSERT_TRUE(write_secret_file(dir_ + "/g", "secret-from-the-flag-0123456789\n").ok());
    EXPECT_EQ(*load_control_secret(dir_ + "/g"), "secret-from-the-flag-0123456789");
    unsetenv("DS_CONTROL_SECRET_FILE");
    unsetenv("DS_CONTROL_SECRET");
}

TEST(AuthMacTest, BindsRoleNoncesSecretAndChannel) {
    const std::string k = "the-shared-secret-0123456789";
    const Nonce a = random_nonce(), b = random_nonce();
    EXPECT_NE(a, b);
    const Mac m = auth_mac(k, AuthRole::kLeader, a, b, "");
    EXPECT_TRUE(mac_equal(m, auth_mac(k, AuthRole::kLeader, a, b, "")));
    EXPECT_FALSE(mac_equal(m, auth_mac(k, AuthRole::kCoordinator, a, b, "")));  // no reflection
    EXPECT_FALSE(mac_equal(m, auth_mac(k, AuthRole::kLeader, b, a, "")));
    EXPECT_FALSE(mac_equal(m, auth_mac(k + "x", AuthRole::kLeader, a, b, "")));
    EXPECT_FALSE(mac_equal(m, auth_mac(k, AuthRole::kLeader, a, b, std::string(32, '\1'))));
    Mac flipped = m;
    flipped[31] ^= 1;
    EXPECT_FALSE(mac_equal(m, flipped));
    EXPECT_TRUE(constant_time_equal("abc", "abc"));
    EXPECT_FALSE(constant_time_equal("abc", "abd"));
    EXPECT_FALSE(constant_time_equal("abc", "abcd"));
}

}  // namespace
}  // namespace deepshard::control
