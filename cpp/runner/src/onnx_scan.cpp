// Minimal protobuf walks over an ONNX file, as bundle.py reads it with the onnx package:
//
// - where its tensors keep their bytes: the messages that can hold a TensorProto
//   (initializers, sparse initializers, Constant and other tensor attributes, subgraphs,
//   functions, training graphs), as `_external_locations`. Every tensor that points at
//   external data (data_location EXTERNAL or any external_data entry) yields its
//   "location" (empty when it names none), so the loader can require that the manifest
//   lists, and so hashes, every file a backend will read;
// - the main graph's inputs (initializers left out, as `_graph_io`) and outputs with
//   their declared element type and dimensions, for `_check_facts`. Repeated messages
//   merge as protobuf merges them (a later scalar wins, repeated fields append).
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "detail.hpp"

namespace edgeadapt::runner::detail {

namespace {

enum class Msg { Model, Graph, Node, Attribute, Tensor, SparseTensor, Function, TrainingInfo };

// Nesting deeper than this is refused: a graph inside an attribute inside a node is three
// levels, so this allows about 30 nested subgraphs, far beyond any real model.
constexpr int kMaxDepth = 100;

struct Reader {
    const std::uint8_t* p;
    const std::uint8_t* end;
    const std::string& source;

    [[noreturn]] void bad(const std::string& why) const {
        fail(Code::Format, source, "", "not a readable ONNX model (" + why + ")");
    }
    std::uint64_t varint() {
        std::uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (p == end) bad("truncated varint");
            const std::uint8_t b = *p++;
            v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
            if (!(b & 0x80)) return v;
        }
        bad("overlong varint");
    }
    // The next field: its number, wire type and, for length-delimited ones, the bytes.
    bool next(std::uint32_t& field, int& wire, const std::uint8_t*& body, std::size_t& size) {
        if (p == end) return false;
        const std::uint64_t tag = varint();
        field = static_cast<std::uint32_t>(tag >> 3);
        wire = static_cast<int>(tag & 7);
        body = nullptr;
        size = 0;
        switch (wire) {
            case 0: varint(); break;
            case 1:
                if (end - p < 8) bad("truncated fixed64");
                p += 8;
                break;
            case 5:
                if (end - p < 4) bad("truncated fixed32");
                p += 4;
                break;
            case 2: {
                const std::uint64_t n = varint();
                if (n > static_cast<std::uint64_t>(end - p)) bad("length past the end");
                body = p;
                size = static_cast<std::size_t>(n);
                p += size;
                break;
            }
            default: bad("unsupported wire type " + std::to_string(wire));
        }
        if (field == 0) bad("field number 0");
        return true;
    }
};

struct Scan {
    const std::string& source;
    std::vector<std::string>& found;

    void walk(Msg kind, const std::uint8_t* b, std::size_t n, int depth) {
        if (depth > kMaxDepth) fail(Code::Format, source, "", "ONNX messages nest too deeply");
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        bool has_entry = false;
        std::string location;
        while (r.next(field, wire, body, size)) {
            if (wire != 2) continue;
            const auto sub = [&](Msg m) { walk(m, body, size, depth + 1); };
            switch (kind) {
                case Msg::Model:
                    if (field == 7) sub(Msg::Graph);
                    else if (field == 25) sub(Msg::Function);
                    else if (field == 20) sub(Msg::TrainingInfo);
                    break;
                case Msg::TrainingInfo:
                    if (field == 1 || field == 2) sub(Msg::Graph);
                    break;
                case Msg::Function:
                    if (field == 7) sub(Msg::Node);
                    break;
                case Msg::Graph:
                    if (field == 1) sub(Msg::Node);
                    else if (field == 5) sub(Msg::Tensor);
                    else if (field == 15) sub(Msg::SparseTensor);
                    break;
                case Msg::Node:
                    if (field == 5) sub(Msg::Attribute);
                    break;
                case Msg::Attribute:
                    if (field == 5 || field == 10) sub(Msg::Tensor);
                    else if (field == 6 || field == 11) sub(Msg::Graph);
                    else if (field == 22 || field == 23) sub(Msg::SparseTensor);
                    break;
                case Msg::SparseTensor:
                    if (field == 1 || field == 2) sub(Msg::Tensor);
                    break;
                case Msg::Tensor:
                    if (field == 13) {
                        has_entry = true;
                        std::string key, value;
                        entry(body, size, key, value);
                        if (key == "location") location = value;
                    }
                    break;
            }
        }
        if (kind == Msg::Tensor && (has_entry || data_location(b, n) == 1)) found.push_back(location);
    }

    // The last data_location (field 14, varint) of a tensor, 0 when absent.
    std::uint64_t data_location(const std::uint8_t* b, std::size_t n) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        std::uint64_t value = 0;
        const std::uint8_t* before = nullptr;
        while (true) {
            before = r.p;
            if (!r.next(field, wire, body, size)) break;
            if (field == 14 && wire == 0) {
                Reader again{before, r.end, source};
                again.varint();  // the tag
                value = again.varint();
            }
        }
        return value;
    }

    void entry(const std::uint8_t* b, std::size_t n, std::string& key, std::string& value) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        while (r.next(field, wire, body, size)) {
            if (wire != 2) continue;
            if (field == 1) key.assign(reinterpret_cast<const char*>(body), size);
            else if (field == 2) value.assign(reinterpret_cast<const char*>(body), size);
        }
    }
};

// ValueInfoProto (name 1, type 2) -> TypeProto (tensor_type 1; sequence 4, map 5,
// sparse tensor 8, optional 9 replace it: a oneof) -> Tensor (elem_type 1, shape 2) ->
// TensorShapeProto (dim 1) -> Dimension (dim_value 1 | dim_param 2, a oneof).
struct IoScan {
    const std::string& source;

    void dimension(const std::uint8_t* b, std::size_t n, OnnxValue& v) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        std::optional<std::int64_t> value;
        const std::uint8_t* before = nullptr;
        while (true) {
            before = r.p;
            if (!r.next(field, wire, body, size)) break;
            if (field == 1 && wire == 0) {
                Reader again{before, r.end, source};
                again.varint();  // the tag
                value = static_cast<std::int64_t>(again.varint());
            } else if (field == 2 && wire == 2) {
                value.reset();
            }
        }
        v.dims.push_back(value);
    }

    void tensor(const std::uint8_t* b, std::size_t n, OnnxValue& v) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        const std::uint8_t* before = nullptr;
        while (true) {
            before = r.p;
            if (!r.next(field, wire, body, size)) break;
            if (field == 1 && wire == 0) {
                Reader again{before, r.end, source};
                again.varint();
                v.elem_type = static_cast<std::int32_t>(again.varint());
            } else if (field == 2 && wire == 2) {
                v.has_shape = true;
                Reader shape{body, body + size, source};
                std::uint32_t f2 = 0;
                int w2 = 0;
                const std::uint8_t* d = nullptr;
                std::size_t dn = 0;
                while (shape.next(f2, w2, d, dn))
                    if (f2 == 1 && w2 == 2) dimension(d, dn, v);
            }
        }
    }

    void type(const std::uint8_t* b, std::size_t n, OnnxValue& v) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        while (r.next(field, wire, body, size)) {
            if (wire != 2) continue;
            if (field == 1) {
                tensor(body, size, v);
            } else if (field == 4 || field == 5 || field == 8 || field == 9) {
                v.elem_type = 0;  // not a tensor: no element type, no shape
                v.has_shape = false;
                v.dims.clear();
            }
        }
    }

    OnnxValue value(const std::uint8_t* b, std::size_t n) const {
        OnnxValue v;
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        while (r.next(field, wire, body, size)) {
            if (wire != 2) continue;
            if (field == 1) v.name.assign(reinterpret_cast<const char*>(body), size);
            else if (field == 2) type(body, size, v);
        }
        return v;
    }

    // The name (field 8) of a TensorProto.
    std::string tensor_name(const std::uint8_t* b, std::size_t n) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        std::string name;
        while (r.next(field, wire, body, size))
            if (field == 8 && wire == 2) name.assign(reinterpret_cast<const char*>(body), size);
        return name;
    }

    void graph(const std::uint8_t* b, std::size_t n, OnnxIo& io, std::set<std::string>& inits) const {
        Reader r{b, b + n, source};
        std::uint32_t field = 0;
        int wire = 0;
        const std::uint8_t* body = nullptr;
        std::size_t size = 0;
        while (r.next(field, wire, body, size)) {
            if (wire != 2) continue;
            if (field == 11) io.inputs.push_back(value(body, size));
            else if (field == 12) io.outputs.push_back(value(body, size));
            else if (field == 5) inits.insert(tensor_name(body, size));
        }
    }
};

}  // namespace

OnnxIo onnx_graph_io(const std::string& bytes, const std::string& source) {
    const auto* b = reinterpret_cast<const std::uint8_t*>(bytes.data());
    Reader r{b, b + bytes.size(), source};
    IoScan scan{source};
    OnnxIo io;
    std::set<std::string> inits;
    std::uint32_t field = 0;
    int wire = 0;
    const std::uint8_t* body = nullptr;
    std::size_t size = 0;
    while (r.next(field, wire, body, size))
        if (field == 7 && wire == 2) scan.graph(body, size, io, inits);
    std::vector<OnnxValue> inputs;
    for (OnnxValue& v : io.inputs)
        if (!inits.count(v.name)) inputs.push_back(std::move(v));
    io.inputs = std::move(inputs);
    return io;
}

std::vector<std::string> onnx_external_locations(const std::string& bytes, const std::string& source) {
    std::vector<std::string> found;
    Scan scan{source, found};
    scan.walk(Msg::Model, reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), 0);
    return found;
}

}  // namespace edgeadapt::runner::detail
