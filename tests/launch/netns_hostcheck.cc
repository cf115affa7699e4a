// netns_hostcheck: each rank reports the host it runs on, so the netns-cluster test can assert that
// ranks really landed on different "hosts" (UTS namespaces). Rank 0 prints one line per rank:
//   rank R host NAME
// and an allreduce checks the data path works. Plain MPI on purpose: this checks the launcher, not
// our comm layer (tests/comm covers that).
#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0;
    int size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    constexpr int kNameLen = 256;
    char name[kNameLen] = {};
    if (gethostname(name, kNameLen - 1) != 0) {
        std::snprintf(name, kNameLen, "?");
    }
    std::vector<char> all(static_cast<size_t>(size) * kNameLen);
    MPI_Gather(name, kNameLen, MPI_CHAR, all.data(), kNameLen, MPI_CHAR, 0, MPI_COMM_WORLD);

    long long sum = 0;
    long long mine = rank + 1;
    MPI_Allreduce(&mine, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    const long long want = static_cast<long long>(size) * (size + 1) / 2;
    int rc = 0;
    if (sum != want) {
        std::fprintf(stderr, "rank %d: allreduce gave %lld, want %lld\n", rank, sum, want);
        rc = 1;
    }
    if (rank == 0) {
        for (int r = 0; r < size; ++r) {
            std::printf("rank %d host %s\n", r, &all[static_cast<size_t>(r) * kNameLen]);
        }
        std::fflush(stdout);
    }
    MPI_Finalize();
    return rc;
}
