// TensorRT backend (Jetson, NVIDIA GPUs): each step's ONNX file is parsed with
// nvonnxparser and built into an fp32 engine whose optimization profile covers batch
// 1..max_batch; one execution context, one CUDA stream and device buffers sized for
// max_batch per step, allocated once. Inputs are copied host-to-device, outputs back
// into host buffers the session keeps (named tensor API: TensorRT 8.5 or later).
// Compiled only where CMake finds TensorRT and the CUDA toolkit.
#include <NvInfer.h>
#include <NvOnnxParser.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "backends.hpp"
#include "detail.hpp"

namespace edgeadapt::runner {

namespace {

void cuda(cudaError_t rc, const char* what) {
    if (rc != cudaSuccess)
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(rc));
}

class Logger final : public nvinfer1::ILogger {
  public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", msg);
    }
};

struct DeviceBuffer {
    void* ptr = nullptr;
    explicit DeviceBuffer(std::size_t bytes) { cuda(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
    ~DeviceBuffer() { cudaFree(ptr); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

std::int64_t row_of(const nvinfer1::Dims& d) {
    std::int64_t n = 1;
    for (int i = 1; i < d.nbDims; ++i) n *= d.d[i];
    return n;
}

class TensorRtSession final : public Session {
  public:
    TensorRtSession(nvinfer1::IRuntime& runtime, const nvinfer1::IHostMemory& plan,
                    const std::vector<std::string>& inputs, const std::vector<std::string>& outputs,
                    int max_batch, const std::filesystem::path& path)
        : engine_(runtime.deserializeCudaEngine(plan.data(), plan.size())),
          inputs_(inputs), outputs_(outputs), max_batch_(max_batch) {
        if (!engine_) throw std::runtime_error("cannot deserialize the engine");
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw std::runtime_error("cannot create an execution context");
        cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
        for (const auto& n : inputs_) in_dims_.push_back(engine_->getTensorShape(n.c_str()));
        for (const auto* names : {&inputs_, &outputs_}) {
            for (const auto& n : *names) {
                if (engine_->getTensorDataType(n.c_str()) != nvinfer1::DataType::kFLOAT)
                    detail::fail(Code::Format, path.string(), "",
                                 "tensor '" + n + "' is not float32; the runner handles float32");
                const nvinfer1::Dims d = engine_->getTensorShape(n.c_str());
                const std::int64_t row = row_of(d);
                if (row < 1)
                    detail::fail(Code::Format, path.string(), "",
                                 "tensor '" + n + "' has a dynamic dimension after the batch axis");
                buffers_.push_back(std::make_unique<DeviceBuffer>(
                    static_cast<std::size_t>(row * max_batch) * sizeof(float)));
                if (!context_->setTensorAddress(n.c_str(), buffers_.back()->ptr))
                    throw std::runtime_error("cannot bind tensor '" + n + "'");
            }
        }
        for (const auto& n : outputs_)
            host_.emplace_back(static_cast<std::size_t>(row_of(engine_->getTensorShape(n.c_str())) *
                                                        max_batch));
    }

    ~TensorRtSession() override { cudaStreamDestroy(stream_); }

    // Every tensor is float32 (checked at load).
    DType input_type(std::size_t) const override { return DType::Float32; }

    void set_input(std::size_t index, const void* data, std::int64_t rows,
                   std::int64_t row_elements) override {
        if (rows > max_batch_)
            throw std::runtime_error("batch of " + std::to_string(rows) +
                                     " exceeds the engine's max_batch " + std::to_string(max_batch_));
        nvinfer1::Dims d = in_dims_[index];
        if (row_of(d) != row_elements)
            throw std::runtime_error("input '" + inputs_[index] + "' expects " +
                                     std::to_string(row_of(d)) + " values per row");
        d.d[0] = rows;
        if (!context_->setInputShape(inputs_[index].c_str(), d))
            throw std::runtime_error("cannot set the shape of input '" + inputs_[index] + "'");
        cuda(cudaMemcpyAsync(buffers_[index]->ptr, data,
                             static_cast<std::size_t>(rows * row_elements) * sizeof(float),
                             cudaMemcpyHostToDevice, stream_),
             "cudaMemcpyAsync (input)");
    }

    void infer() override {
        if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed");
        views_.resize(outputs_.size());
        for (std::size_t k = 0; k < outputs_.size(); ++k) {
            const nvinfer1::Dims d = context_->getTensorShape(outputs_[k].c_str());
            views_[k] = {host_[k].data(), d.d[0], row_of(d), d.nbDims};
            cuda(cudaMemcpyAsync(host_[k].data(), buffers_[inputs_.size() + k]->ptr,
                                 static_cast<std::size_t>(d.d[0] * row_of(d)) * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync (output)");
        }
        cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }

    TensorView output(std::size_t index) const override { return views_.at(index); }

  private:
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    std::vector<std::string> inputs_, outputs_;
    int max_batch_;
    cudaStream_t stream_ = nullptr;
    std::vector<nvinfer1::Dims> in_dims_;
    std::vector<std::unique_ptr<DeviceBuffer>> buffers_;  // inputs, then outputs
    std::vector<std::vector<float>> host_;
    std::vector<TensorView> views_;
};

class TensorRtBackend final : public Backend {
  public:
    explicit TensorRtBackend(const BackendOptions& options) : max_batch_(options.max_batch) {
        if (max_batch_ < 1) detail::fail(Code::Input, "max_batch", "", "must be >= 1");
        cuda(cudaSetDevice(options.device.empty() ? 0 : std::stoi(options.device)), "cudaSetDevice");
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (!runtime_) throw std::runtime_error("cannot create the TensorRT runtime");
    }

    std::string name() const override { return "tensorrt"; }

    std::unique_ptr<Session> load(const std::filesystem::path& onnx,
                                  const std::vector<std::string>& inputs,
                                  const std::vector<std::string>& outputs) override {
        std::unique_ptr<nvinfer1::IBuilder> builder(nvinfer1::createInferBuilder(logger_));
#if NV_TENSORRT_MAJOR < 10
        const auto flags = 1U << static_cast<std::uint32_t>(
                               nvinfer1::NetworkDefinitionCreationFlag::kEXPLICIT_BATCH);
#else
        const std::uint32_t flags = 0;
#endif
        std::unique_ptr<nvinfer1::INetworkDefinition> network(builder->createNetworkV2(flags));
        std::unique_ptr<nvonnxparser::IParser> parser(nvonnxparser::createParser(*network, logger_));
        if (!parser->parseFromFile(onnx.string().c_str(),
                                   static_cast<int>(nvinfer1::ILogger::Severity::kWARNING)))
            detail::fail(Code::Backend, onnx.string(), "", "TensorRT cannot parse the ONNX file");
        check_io(*network, inputs, outputs, onnx);
        std::unique_ptr<nvinfer1::IBuilderConfig> config(builder->createBuilderConfig());
        nvinfer1::IOptimizationProfile* profile = builder->createOptimizationProfile();
        for (int i = 0; i < network->getNbInputs(); ++i) {
            const nvinfer1::ITensor* t = network->getInput(i);
            nvinfer1::Dims lo = t->getDimensions(), hi = lo;
            lo.d[0] = 1;
            hi.d[0] = max_batch_;
            profile->setDimensions(t->getName(), nvinfer1::OptProfileSelector::kMIN, lo);
            profile->setDimensions(t->getName(), nvinfer1::OptProfileSelector::kOPT, hi);
            profile->setDimensions(t->getName(), nvinfer1::OptProfileSelector::kMAX, hi);
        }
        config->addOptimizationProfile(profile);
        std::unique_ptr<nvinfer1::IHostMemory> plan(builder->buildSerializedNetwork(*network, *config));
        if (!plan) detail::fail(Code::Backend, onnx.string(), "", "TensorRT cannot build an engine");
        return std::make_unique<TensorRtSession>(*runtime_, *plan, inputs, outputs, max_batch_, onnx);
    }

  private:
    static void check_io(const nvinfer1::INetworkDefinition& net, const std::vector<std::string>& inputs,
                         const std::vector<std::string>& outputs, const std::filesystem::path& path) {
        std::vector<std::string> in, out;
        for (int i = 0; i < net.getNbInputs(); ++i) in.emplace_back(net.getInput(i)->getName());
        for (int i = 0; i < net.getNbOutputs(); ++i) out.emplace_back(net.getOutput(i)->getName());
        const auto same = [](std::vector<std::string> a, std::vector<std::string> b) {
            std::sort(a.begin(), a.end());
            std::sort(b.begin(), b.end());
            return a == b;
        };
        if (!same(in, inputs) || !same(out, outputs))
            detail::fail(Code::Format, path.string(), "",
                         "its inputs and outputs differ from the manifest's");
    }

    Logger logger_;
    int max_batch_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
};

}  // namespace

std::shared_ptr<Backend> make_tensorrt(const BackendOptions& options) {
    return std::make_shared<TensorRtBackend>(options);
}

}  // namespace edgeadapt::runner
