// Linked into every test binary (deepshard_add_test). ctest's ENVIRONMENT property reaches
// gtest_discover_tests tests only partly (the generated file splits the list), so the variables the
// tests rely on get defaults here, from the build that made the binary; a value already in the
// environment wins, so a test can still be pointed elsewhere.
#include <cstdlib>

namespace {

struct TestEnvDefaults {
    TestEnvDefaults() {
        setenv("DS_SOURCE_DIR", DS_TEST_SOURCE_DIR, 0);
        setenv("DS_BINARY_DIR", DS_TEST_BINARY_DIR, 0);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    }
};

const TestEnvDefaults kDefaults;

}  // namespace
