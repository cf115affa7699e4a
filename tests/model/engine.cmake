deepshard_add_test(kv_cache_test SOURCES kv_cache_test.cc DEPS deepshard::model)
deepshard_add_test(golden_test SOURCES golden_test.cc DEPS deepshard::model)
