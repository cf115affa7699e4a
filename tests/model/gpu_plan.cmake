# The CUDA engine's host-side planning (model/gpu/plan.h, upload.h): runs on any machine.
deepshard_add_test(gpu_plan_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/gpu_plan_test.cc DEPS deepshard::model_gpu_plan)
# The GPU sampler's algorithm (kernels/cuda/sampling_math.h, host-compiled) against model::Sampler.
deepshard_add_test(gpu_sampler_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/gpu_sampler_test.cc
  DEPS deepshard::sampling deepshard::kernels)
