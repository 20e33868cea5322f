// OpenVINO backend: Core::compile_model with a latency hint and fp32 precision (as
// runtimes/openvino.py), one reused infer request per step. A small input is copied
// into the request's own input tensor (kept allocated); a large one is wrapped in a
// tensor sharing the caller's memory, which saves the copy.
#include <algorithm>
#include <cstring>
#include <openvino/openvino.hpp>

#include "backends.hpp"
#include "detail.hpp"

namespace edgeadapt::runner {

namespace {

// Above this many bytes an input is shared with OpenVINO instead of copied.
constexpr std::size_t kShareBytes = 64 * 1024;

std::string port_names(const std::vector<ov::Output<const ov::Node>>& ports) {
    std::string out;
    for (const auto& p : ports) out += (out.empty() ? "'" : ", '") + p.get_any_name() + "'";
    return "[" + out + "]";
}

std::string names(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& n : v) out += (out.empty() ? "'" : ", '") + n + "'";
    return "[" + out + "]";
}

class OpenVinoSession final : public Session {
  public:
    OpenVinoSession(ov::CompiledModel compiled, const std::filesystem::path& path,
                    const std::vector<std::string>& inputs, const std::vector<std::string>& outputs)
        : compiled_(std::move(compiled)), request_(compiled_.create_infer_request()) {
        const auto& in = compiled_.inputs();
        const auto& out = compiled_.outputs();
        const auto has = [](const std::vector<ov::Output<const ov::Node>>& ports,
                            const std::string& name) {
            return std::any_of(ports.begin(), ports.end(),
                               [&](const auto& p) { return p.get_names().count(name) > 0; });
        };
        bool match = in.size() == inputs.size() && out.size() == outputs.size();
        for (const auto& n : inputs) match = match && has(in, n);
        for (const auto& n : outputs) match = match && has(out, n);
        if (!match) {
            detail::fail(Code::Format, path.string(), "",
                         "has inputs " + port_names(in) + " and outputs " + port_names(out) +
                             "; the manifest says " + names(inputs) + " and " + names(outputs));
        }
        for (const auto& n : inputs) {
            const ov::Output<const ov::Node> port = compiled_.input(n);
            check_port(port, path, true);
            const ov::PartialShape shape = port.get_partial_shape();
            ov::Shape dims(shape.size(), 1);
            for (std::size_t d = 1; d < shape.size(); ++d) {
                if (shape[d].is_dynamic())
                    detail::fail(Code::Format, path.string(), "",
                                 "input '" + n + "' has a dynamic dimension after the batch axis");
                dims[d] = static_cast<std::size_t>(shape[d].get_length());
            }
            in_ports_.push_back(port);
            in_types_.push_back(port.get_element_type() == ov::element::i64 ? DType::Int64
                                                                            : DType::Float32);
            in_shapes_.push_back(dims);
            own_.push_back(request_.get_tensor(port));
            shared_.push_back(false);
        }
        for (const auto& n : outputs) {
            out_ports_.push_back(compiled_.output(n));
            check_port(out_ports_.back(), path, false);
        }
    }

    DType input_type(std::size_t index) const override { return in_types_.at(index); }

    void set_input(std::size_t index, const void* data, std::int64_t rows,
                   std::int64_t row_elements) override {
        ov::Shape& shape = in_shapes_[index];
        shape[0] = 1;
        if (static_cast<std::int64_t>(ov::shape_size(shape)) != row_elements)
            throw std::runtime_error("input '" + in_ports_[index].get_any_name() + "' expects " +
                                     std::to_string(ov::shape_size(shape)) +
                                     " values per row, got " + std::to_string(row_elements));
        shape[0] = static_cast<std::size_t>(rows);
        const DType type = in_types_[index];
        const std::size_t bytes = ov::shape_size(shape) * dtype_size(type);
        if (bytes > kShareBytes) {
            request_.set_tensor(in_ports_[index],
                                ov::Tensor(type == DType::Int64 ? ov::element::i64 : ov::element::f32,
                                           shape, const_cast<void*>(data)));
            shared_[index] = true;
            return;
        }
        if (shared_[index]) {
            request_.set_tensor(in_ports_[index], own_[index]);
            shared_[index] = false;
        }
        ov::Tensor& own = own_[index];
        own.set_shape(shape);
        std::memcpy(own.data(), data, bytes);
    }

    void infer() override { request_.infer(); }

    TensorView output(std::size_t index) const override {
        const ov::Tensor t = request_.get_tensor(out_ports_[index]);
        const ov::Shape& shape = t.get_shape();
        const auto rows = static_cast<std::int64_t>(shape.empty() ? 1 : shape[0]);
        const auto total = static_cast<std::int64_t>(t.get_size());
        return {t.data<const float>(), rows, rows ? total / rows : 0,
                static_cast<std::int64_t>(shape.size())};
    }

  private:
    // Outputs are float32; inputs float32 or int64 (token ids, masks).
    static void check_port(const ov::Output<const ov::Node>& port, const std::filesystem::path& path,
                           bool input) {
        const ov::element::Type type = port.get_element_type();
        if (type != ov::element::f32 && !(input && type == ov::element::i64))
            detail::fail(Code::Format, path.string(), "",
                         "tensor '" + port.get_any_name() + "' is " + type.get_type_name() +
                             (input ? "; the native runner feeds float32 and int64 inputs"
                                    : "; the native runner handles float32 tensors"));
        if (port.get_partial_shape().rank().is_dynamic())
            detail::fail(Code::Format, path.string(), "",
                         "tensor '" + port.get_any_name() + "' has a dynamic rank");
    }

    ov::CompiledModel compiled_;
    mutable ov::InferRequest request_;
    std::vector<ov::Output<const ov::Node>> in_ports_, out_ports_;
    std::vector<ov::Shape> in_shapes_;
    std::vector<DType> in_types_;
    std::vector<ov::Tensor> own_;
    std::vector<bool> shared_;
};

class OpenVinoBackend final : public Backend {
  public:
    explicit OpenVinoBackend(const BackendOptions& options)
        : device_(options.device.empty() ? "CPU" : options.device) {
        const std::vector<std::string> available = core_.get_available_devices();
        const std::string base = device_.substr(0, device_.find('.'));
        if (std::none_of(available.begin(), available.end(), [&](const std::string& d) {
                return d == device_ || d == base || d.substr(0, d.find('.')) == device_;
            })) {
            detail::fail(Code::Input, "device", "",
                         "OpenVINO device '" + device_ + "' is not available here (found " +
                             names(available) + ")");
        }
        const std::string& hint = options.hint;
        if (hint != "LATENCY" && hint != "THROUGHPUT" && hint != "CUMULATIVE_THROUGHPUT")
            detail::fail(Code::Input, "hint", "",
                         "must be LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT, got '" + hint + "'");
        config_.emplace(ov::hint::performance_mode(
            hint == "LATENCY"      ? ov::hint::PerformanceMode::LATENCY
            : hint == "THROUGHPUT" ? ov::hint::PerformanceMode::THROUGHPUT
                                   : ov::hint::PerformanceMode::CUMULATIVE_THROUGHPUT));
        const std::string& precision = options.precision;
        if (precision != "fp32" && precision != "fp16" && precision != "bf16")
            detail::fail(Code::Input, "precision", "",
                         "must be fp32, fp16 or bf16, got '" + precision + "'");
        config_.emplace(ov::hint::inference_precision(precision == "fp32"   ? ov::element::f32
                                                      : precision == "fp16" ? ov::element::f16
                                                                            : ov::element::bf16));
        if (options.threads > 0 && device_.rfind("CPU", 0) == 0)
            config_.emplace(ov::inference_num_threads(options.threads));
    }

    std::string name() const override { return "openvino"; }

    std::unique_ptr<Session> load(const std::filesystem::path& onnx,
                                  const std::vector<std::string>& inputs,
                                  const std::vector<std::string>& outputs) override {
        return std::make_unique<OpenVinoSession>(core_.compile_model(onnx.string(), device_, config_),
                                                 onnx, inputs, outputs);
    }

  private:
    ov::Core core_;
    std::string device_;
    ov::AnyMap config_;
};

}  // namespace

std::shared_ptr<Backend> make_openvino(const BackendOptions& options) {
    return std::make_shared<OpenVinoBackend>(options);
}

}  // namespace edgeadapt::runner
