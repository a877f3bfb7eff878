// groupnorm inside OpenVINO: one custom operation (GroupnormGroupNorm) whose
// evaluate() runs groupnorm's CPU kernel on OpenVINO's own threads, and ONNX
// frontend conversions that map GroupNormalization-18/21 and ONNX Runtime's
// com.microsoft.GroupNorm / SkipGroupNorm onto it.
//
// Depends on the public C++ API (groupnorm/groupnorm.hpp) and on OpenVINO's
// public headers only; the groupnorm core never includes an OpenVINO header.
#pragma once

#include <cstdint>
#include <memory>

#include <openvino/op/op.hpp>

namespace groupnorm {
namespace openvino {

// Inputs: x, weight (C), bias (C), [skip (like x), [skip_bias (C)]].
// Outputs: y (like x), [sum (like x): x + skip (+ skip_bias), when emit_sum].
// x, y, skip, skip_bias, sum: f32, f16, bf16 or f64; weight and bias: x's type or f32.
class GroupNorm : public ov::op::Op {
public:
    OPENVINO_OP("GroupnormGroupNorm", "groupnorm");

    GroupNorm() = default;
    GroupNorm(const ov::OutputVector& args, std::int64_t num_groups, double epsilon, bool channels_last,
              bool silu, bool emit_sum);

    void validate_and_infer_types() override;
    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& new_args) const override;
    bool visit_attributes(ov::AttributeVisitor& visitor) override;
    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
    bool has_evaluate() const override;

    std::int64_t num_groups() const { return m_num_groups; }
    double epsilon() const { return m_epsilon; }
    bool channels_last() const { return m_channels_last; }
    bool silu() const { return m_silu; }
    bool emit_sum() const { return m_emit_sum; }

private:
    std::int64_t m_num_groups = 1;
    double m_epsilon = 1e-5;
    bool m_channels_last = false;
    bool m_silu = false;
    bool m_emit_sum = false;
};

}  // namespace openvino
}  // namespace groupnorm
