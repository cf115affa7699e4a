#include "common/secret_file.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace deepshard {

namespace {

std::string trim(const std::string& s) {
    const char* ws = " \t\r\n";
    const size_t a = s.find_first_not_of(ws);
    if (a == std::string::npos) return "";
    const size_t b = s.find_last_not_of(ws);
    return s.substr(a, b - a + 1);
}

// Overwrites secret bytes before the memory is released.
void wipe(void* p, size_t n) {
    volatile unsigned char* v = static_cast<volatile unsigned char*>(p);
    while (n--) *v++ = 0;
}

}  // namespace

StatusOr<std::string> read_secret_file(const std::string& path, const std::string& what, size_t max_bytes) {
    // O_NOFOLLOW|O_NONBLOCK: a symlink or a FIFO planted in its place is refused, never waited on.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return not_found(what + " " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return invalid_argument(what + " " + path + " is not a regular file");
    }
    if ((st.st_mode & 077) != 0) {
        ::close(fd);
        char mode[8];
        std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
        return invalid_argument(what + " " + path + " is accessible to other users (mode " + mode +
                                "); make it readable by its owner only (chmod 600)");
    }
    if (static_cast<uint64_t>(st.st_size) > max_bytes) {
        ::close(fd);
        return invalid_argument(what + " " + path + " is " + std::to_string(st.st_size) + " bytes; at most " +
                                std::to_string(max_bytes) + " are expected");
    }
    std::string text(static_cast<size_t>(st.st_size), '\0');
    size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<size_t>(n);
    }
    ::close(fd);
    text.resize(got);
    std::string out = trim(text);
    wipe(text.data(), text.size());
    return out;
}

Status write_new_secret_file(const std::string& path) {
    unsigned char raw[32];
    size_t have = 0;
    while (have < sizeof(raw)) {
        const ssize_t n = ::getrandom(raw + have, sizeof(raw) - have, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return internal_error(std::string("getrandom failed: ") + std::strerror(errno));
        have += static_cast<size_t>(n);
    }
    static const char* hex = "0123456789abcdef";
    std::string text;
    for (unsigned char b : raw) {
        text += hex[b >> 4];
        text += hex[b & 15];
    }
    text += '\n';
    wipe(raw, sizeof(raw));
    Status s = write_secret_file(path, text);
    wipe(text.data(), text.size());
    return s;
}

Status write_secret_file(const std::string& path, const std::string& text) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return io_error("cannot create the secret file " + path + ": " + std::strerror(errno));
    // The umask cannot widen 0600, but a default ACL of the directory could: pin the mode.
    (void)::fchmod(fd, 0600);
    size_t done = 0;
    Status result = ok_status();
    while (done < text.size()) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            result = io_error("cannot write the secret file " + path + ": " + std::strerror(errno));
            break;
        }
        done += static_cast<size_t>(n);
    }
    if (result.ok() && ::fsync(fd) != 0) result = io_error("cannot write the secret file " + path);
    ::close(fd);
    if (!result.ok()) ::unlink(path.c_str());
    return result;
}

}  // namespace deepshard
