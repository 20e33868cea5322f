// A small reader for the .npy files the examples take: float32 ('<f4'), C order,
// format versions 1-3. Errors name the file and what is wrong with it.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "edgeadapt/runner.hpp"

namespace edgeadapt::examples {

struct NpyArray {
    std::vector<std::int64_t> shape;
    std::vector<float> data;
};

namespace npy_detail {

// The value of 'key' in the header dict, up to the next ',' or '}' outside brackets.
inline bool header_value(const std::string& header, const std::string& key, std::string& out) {
    const std::size_t at = header.find("'" + key + "':");
    if (at == std::string::npos) return false;
    std::size_t i = at + key.size() + 3;
    int depth = 0;
    std::size_t end = i;
    for (; end < header.size(); ++end) {
        const char c = header[end];
        if (c == '(') ++depth;
        if (c == ')') --depth;
        if (depth == 0 && (c == ',' || c == '}')) break;
    }
    out = header.substr(i, end - i);
    const auto trim = [](std::string& s) {
        s.erase(0, s.find_first_not_of(" "));
        s.erase(s.find_last_not_of(" ") + 1);
    };
    trim(out);
    return true;
}

}  // namespace npy_detail

inline runner::Error read_npy(const std::filesystem::path& path, NpyArray& out) noexcept {
    const std::string src = path.string();
    const auto bad = [&src](const std::string& what) {
        return runner::Error{runner::Code::Format, src + ": " + what};
    };
    try {
        // checked before opening: opening a FIFO would block until a writer comes
        std::error_code ec;
        const auto status = std::filesystem::status(path, ec);
        if (!std::filesystem::exists(status)) return {runner::Code::Io, src + ": file not found"};
        if (!std::filesystem::is_regular_file(status))
            return {runner::Code::Io, src + ": not a regular file"};
        std::ifstream in(path, std::ios::binary);
        if (!in.is_open()) return {runner::Code::Io, src + ": cannot open the file"};
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
            return bad("not a .npy file (no \\x93NUMPY magic)");
        const auto major = static_cast<unsigned char>(bytes[6]);
        if (major < 1 || major > 3) return bad("unsupported .npy version " + std::to_string(major));
        std::size_t len = 0, off = 0;
        const auto byte = [&bytes](std::size_t i) { return static_cast<std::size_t>(static_cast<unsigned char>(bytes[i])); };
        if (major == 1) {
            len = byte(8) | byte(9) << 8;
            off = 10;
        } else {
            if (bytes.size() < 12) return bad("truncated header");
            len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
            off = 12;
        }
        if (bytes.size() < off + len) return bad("truncated header");
        const std::string header = bytes.substr(off, len);
        std::string descr, order, shape;
        if (!npy_detail::header_value(header, "descr", descr) ||
            !npy_detail::header_value(header, "fortran_order", order) ||
            !npy_detail::header_value(header, "shape", shape))
            return bad("header lacks descr, fortran_order or shape");
        if (descr != "'<f4'") return bad("dtype must be float32 ('<f4'), got " + descr);
        if (order != "False") return bad("must be in C order (fortran_order is " + order + ")");
        if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
            return bad("cannot read shape " + shape);
        NpyArray a;
        std::size_t count = 1;
        std::string body = shape.substr(1, shape.size() - 2);
        std::size_t pos = 0;
        while (pos < body.size()) {
            std::size_t comma = body.find(',', pos);
            if (comma == std::string::npos) comma = body.size();
            std::string dim = body.substr(pos, comma - pos);
            dim.erase(0, dim.find_first_not_of(" "));
            dim.erase(dim.find_last_not_of(" ") + 1);
            pos = comma + 1;
            if (dim.empty()) continue;
            if (dim.find_first_not_of("0123456789") != std::string::npos || dim.size() > 12)
                return bad("cannot read shape " + shape);
            a.shape.push_back(std::stoll(dim));
            const auto d = static_cast<std::size_t>(a.shape.back());
            // no product can overflow: beyond the bytes present the file is short anyway
            if (d != 0 && count > (bytes.size() / sizeof(float)) / d)
                return bad("shape " + shape + " needs more data than the file's " +
                           std::to_string(bytes.size()) + " bytes");
            count *= d;
        }
        const std::size_t data_bytes = bytes.size() - off - len;
        if (data_bytes != count * sizeof(float))
            return bad("holds " + std::to_string(data_bytes) + " data bytes, shape " + shape +
                       " needs " + std::to_string(count * sizeof(float)));
        a.data.resize(count);
        if (count) std::memcpy(a.data.data(), bytes.data() + off + len, data_bytes);
        out = std::move(a);
        return {};
    } catch (const std::exception& e) {
        return bad(e.what());
    }
}

}  // namespace edgeadapt::examples
