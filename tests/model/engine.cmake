deepshard_add_test(kv_cache_test SOURCES kv_cache_test.cc DEPS deepshard::model)
deepshard_add_test(golden_test SOURCES golden_test.cc routing_judge.cc DEPS deepshard::model)
# The fast numerics mode against the same golden sets, routing first.
deepshard_add_test(golden_fast_test SOURCES golden_fast_test.cc routing_judge.cc DEPS deepshard::model)
# The engine seam (ShardWeights byte ranges, create_engine, --device); runs the deepshard CLI.
deepshard_add_test(engine_test SOURCES engine_test.cc DEPS deepshard::model deepshard_test_util LABELS integration)
