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

// One field of a message: its number and wire type; a varint's value (wire 0) or a
// length-delimited field's bytes (wire 2).
struct Field {
    std::uint32_t number = 0;
    int wire = 0;
    std::uint64_t value = 0;
    const std::uint8_t* body = nullptr;
    std::size_t size = 0;

    bool bytes(std::uint32_t n) const { return number == n && wire == 2; }
    bool varint(std::uint32_t n) const { return number == n && wire == 0; }
    std::string text() const { return {reinterpret_cast<const char*>(body), size}; }
};

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
    bool next(Field& f) {
        if (p == end) return false;
        const std::uint64_t tag = varint();
        f = Field{};
        f.number = static_cast<std::uint32_t>(tag >> 3);
        f.wire = static_cast<int>(tag & 7);
        switch (f.wire) {
            case 0: f.value = varint(); break;
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
                f.body = p;
                f.size = static_cast<std::size_t>(n);
                p += f.size;
                break;
            }
            default: bad("unsupported wire type " + std::to_string(f.wire));
        }
        if (f.number == 0) bad("field number 0");
        return true;
    }
};

// Calls `on(field)` for each field of the message in b[0..n), in order.
template <class On>
void each_field(const std::uint8_t* b, std::size_t n, const std::string& source, On&& on) {
    Reader r{b, b + n, source};
    Field f;
    while (r.next(f)) on(f);
}

struct Scan {
    const std::string& source;
    std::vector<std::string>& found;

    void walk(Msg kind, const std::uint8_t* b, std::size_t n, int depth) {
        if (depth > kMaxDepth) fail(Code::Format, source, "", "ONNX messages nest too deeply");
        bool has_entry = false;
        std::uint64_t data_location = 0;  // the last one: EXTERNAL is 1
        std::string location;
        each_field(b, n, source, [&](const Field& f) {
            if (kind == Msg::Tensor && f.varint(14)) data_location = f.value;
            if (f.wire != 2) return;
            const auto sub = [&](Msg m) { walk(m, f.body, f.size, depth + 1); };
            const std::uint32_t field = f.number;
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
                    if (field == 13) {  // an external_data entry: key 1, value 2
                        has_entry = true;
                        std::string key, value;
                        each_field(f.body, f.size, source, [&](const Field& e) {
                            if (e.bytes(1)) key = e.text();
                            else if (e.bytes(2)) value = e.text();
                        });
                        if (key == "location") location = value;
                    }
                    break;
            }
        });
        if (kind == Msg::Tensor && (has_entry || data_location == 1)) found.push_back(location);
    }
};

// ValueInfoProto (name 1, type 2) -> TypeProto (tensor_type 1; sequence 4, map 5,
// sparse tensor 8, optional 9 replace it: a oneof) -> Tensor (elem_type 1, shape 2) ->
// TensorShapeProto (dim 1) -> Dimension (dim_value 1 | dim_param 2, a oneof).
struct IoScan {
    const std::string& source;

    void tensor(const std::uint8_t* b, std::size_t n, OnnxValue& v) const {
        each_field(b, n, source, [&](const Field& f) {
            if (f.varint(1)) v.elem_type = static_cast<std::int32_t>(f.value);
            if (!f.bytes(2)) return;
            v.has_shape = true;
            each_field(f.body, f.size, source, [&](const Field& dim) {
                if (!dim.bytes(1)) return;
                std::optional<std::int64_t> size;
                each_field(dim.body, dim.size, source, [&](const Field& d) {
                    if (d.varint(1)) size = static_cast<std::int64_t>(d.value);
                    else if (d.bytes(2)) size.reset();
                });
                v.dims.push_back(size);
            });
        });
    }

    OnnxValue value(const std::uint8_t* b, std::size_t n) const {
        OnnxValue v;
        each_field(b, n, source, [&](const Field& f) {
            if (f.bytes(1)) v.name = f.text();
            if (!f.bytes(2)) return;
            each_field(f.body, f.size, source, [&](const Field& t) {
                if (t.bytes(1)) {
                    tensor(t.body, t.size, v);
                } else if (t.wire == 2 && (t.number == 4 || t.number == 5 || t.number == 8 ||
                                           t.number == 9)) {
                    v.elem_type = 0;  // not a tensor: no element type, no shape
                    v.has_shape = false;
                    v.dims.clear();
                }
            });
        });
        return v;
    }

    // The graph's inputs (11) and outputs (12), and the names (8) of its initializers (5).
    void graph(const std::uint8_t* b, std::size_t n, OnnxIo& io, std::set<std::string>& inits) const {
        each_field(b, n, source, [&](const Field& f) {
            if (f.bytes(11)) io.inputs.push_back(value(f.body, f.size));
            else if (f.bytes(12)) io.outputs.push_back(value(f.body, f.size));
            else if (f.bytes(5))
                each_field(f.body, f.size, source, [&](const Field& t) {
                    if (t.bytes(8)) inits.insert(t.text());
                });
        });
    }
};

}  // namespace

OnnxIo onnx_graph_io(const std::string& bytes, const std::string& source) {
    OnnxIo io;
    std::set<std::string> inits;
    const IoScan scan{source};
    each_field(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), source,
               [&](const Field& f) {
                   if (f.bytes(7)) scan.graph(f.body, f.size, io, inits);
               });
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
