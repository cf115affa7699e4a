#include "common/npy.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

namespace deepshard {

StatusOr<NpyArray> read_npy_f32(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return io_error("cannot open " + path);
    }
    char magic[8];
    if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
        return data_loss(path + ": not a .npy file");
    }
    uint32_t hlen = 0;
    if (magic[6] == 1) {
        uint8_t b[2];
        in.read(reinterpret_cast<char*>(b), 2);
        hlen = b[0] | (b[1] << 8);
    } else {
        uint8_t b[4];
        in.read(reinterpret_cast<char*>(b), 4);
        hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
    }
    if (!in || hlen > (1u << 20)) {
        return data_loss(path + ": bad .npy header length");
    }
    std::string header(hlen, '\0');
    in.read(header.data(), hlen);
    if (header.find("'<f4'") == std::string::npos) {
        return invalid_argument(path + ": only little-endian float32 (<f4) arrays are supported");
    }
    if (header.find("'fortran_order': True") != std::string::npos) {
        return invalid_argument(path + ": Fortran-order arrays are not supported");
    }
    auto lp = header.find("'shape': (");
    if (lp == std::string::npos) {
        return data_loss(path + ": .npy header has no shape");
    }
    auto rp = header.find(')', lp);
    std::string dims = header.substr(lp + 10, rp - lp - 10);
    NpyArray arr;
    std::stringstream ss(dims);
    std::string tok;
    int64_t count = 1;
    while (std::getline(ss, tok, ',')) {
        if (tok.find_first_not_of(" ") == std::string::npos) continue;
        int64_t d = std::stoll(tok);
        arr.shape.push_back(d);
        count *= d;
    }
    arr.data.resize(static_cast<size_t>(count));
    if (!in.read(reinterpret_cast<char*>(arr.data.data()), count * 4)) {
        return data_loss(path + ": truncated .npy data");
    }
    return arr;
}

Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
    std::string dims;
    int64_t count = 1;
    for (auto d : shape) {
        dims += std::to_string(d) + ",";
        count *= d;
    }
    if (shape.size() > 1) dims.pop_back();
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    size_t total = 10 + header.size() + 1;
    size_t pad = (64 - total % 64) % 64;
    header.append(pad, ' ');
    header.push_back('\n');
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
    if (!f) {
        return io_error("cannot write " + path);
    }
    const char magic[] = "\x93NUMPY\x01\x00";
    uint16_t hl = static_cast<uint16_t>(header.size());
    uint8_t hb[2] = {static_cast<uint8_t>(hl & 0xff), static_cast<uint8_t>(hl >> 8)};
    if (std::fwrite(magic, 1, 8, f.get()) != 8 || std::fwrite(hb, 1, 2, f.get()) != 2 ||
        std::fwrite(header.data(), 1, header.size(), f.get()) != header.size() ||
        std::fwrite(data, 4, static_cast<size_t>(count), f.get()) != static_cast<size_t>(count)) {
        return io_error("short write to " + path);
    }
    return ok_status();
}

}  // namespace deepshard
