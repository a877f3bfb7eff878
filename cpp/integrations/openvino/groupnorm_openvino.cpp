// See groupnorm_openvino.hpp. Built by -DGROUPNORM_OPENVINO=ON into a shared
// library that OpenVINO loads with Core::add_extension(path).
#include "groupnorm_openvino.hpp"

#include <groupnorm/groupnorm.hpp>

#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/conversion.hpp>
#include <openvino/op/add.hpp>
#include <openvino/op/broadcast.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/op/convert.hpp>
#include <openvino/op/multiply.hpp>
#include <openvino/op/reshape.hpp>
#include <openvino/op/shape_of.hpp>

namespace groupnorm {
namespace openvino {

namespace {

bool to_dtype(const ov::element::Type& t, DType* out) {
    if (t == ov::element::f32) *out = DType::float32;
    else if (t == ov::element::f64) *out = DType::float64;
    else if (t == ov::element::f16) *out = DType::float16;
    else if (t == ov::element::bf16) *out = DType::bfloat16;
    else return false;
    return true;
}

bool is_data_type(const ov::element::Type& t) {
    DType d;
    return t.is_dynamic() || to_dtype(t, &d);
}

// groupnorm's parallel-for hook on OpenVINO's threads: ov::parallel_for runs in
// the task arena of the infer request's stream (TBB in the wheel), so the
// kernel shares the engine's threads and never starts a pool of its own.
void ov_parallel_for(void*, std::int64_t n, TaskFn task, void* task_ctx) {
    ov::parallel_for(n, [&](std::int64_t i) { task(task_ctx, i); });
}

}  // namespace

GroupNorm::GroupNorm(const ov::OutputVector& args, std::int64_t num_groups, double epsilon, bool channels_last,
                     bool silu, bool emit_sum)
    : Op(args),
      m_num_groups(num_groups),
      m_epsilon(epsilon),
      m_channels_last(channels_last),
      m_silu(silu),
      m_emit_sum(emit_sum) {
    constructor_validate_and_infer_types();
}

void GroupNorm::validate_and_infer_types() {
    const auto n_in = get_input_size();
    NODE_VALIDATION_CHECK(this, n_in >= 3 && n_in <= 5,
                          "GroupnormGroupNorm takes x, weight, bias, [skip, [skip_bias]], got ", n_in, " inputs");
    NODE_VALIDATION_CHECK(this, !m_emit_sum || n_in >= 4, "emit_sum needs the skip input");
    NODE_VALIDATION_CHECK(this, m_num_groups > 0, "num_groups must be positive, got ", m_num_groups);
    const auto& et = get_input_element_type(0);
    NODE_VALIDATION_CHECK(this, is_data_type(et), "x must be f32, f16, bf16 or f64, got ", et);
    const auto& pt = get_input_element_type(1);
    for (size_t i = 1; i < n_in; ++i) {
        if (i == 3) {
            NODE_VALIDATION_CHECK(this, get_input_element_type(3) == et, "skip must have x's type ", et, ", got ",
                                  get_input_element_type(3));
            continue;
        }
        const auto& t = get_input_element_type(i);
        NODE_VALIDATION_CHECK(this, t == pt, "weight, bias and skip_bias must share one type, got ", pt, " and ", t);
    }
    NODE_VALIDATION_CHECK(this, pt.is_dynamic() || et.is_dynamic() || pt == et || pt == ov::element::f32,
                          "weight and bias must have x's type ", et, " or f32, got ", pt);
    const auto& xs = get_input_partial_shape(0);
    if (xs.rank().is_static()) {
        NODE_VALIDATION_CHECK(this, xs.rank().get_length() >= 2, "x must have at least 2 dims, got ", xs);
        const auto& c = m_channels_last ? xs[xs.rank().get_length() - 1] : xs[1];
        if (c.is_static()) {
            NODE_VALIDATION_CHECK(this, c.get_length() % m_num_groups == 0, "num_channels ", c.get_length(),
                                  " is not divisible by num_groups ", m_num_groups);
        }
    }
    if (n_in >= 4) {
        NODE_VALIDATION_CHECK(this, get_input_partial_shape(3).compatible(xs), "skip must have x's shape ", xs,
                              ", got ", get_input_partial_shape(3));
    }
    set_output_type(0, et, xs);
    if (m_emit_sum) set_output_type(1, et, xs);
}

std::shared_ptr<ov::Node> GroupNorm::clone_with_new_inputs(const ov::OutputVector& new_args) const {
    return std::make_shared<GroupNorm>(new_args, m_num_groups, m_epsilon, m_channels_last, m_silu, m_emit_sum);
}

bool GroupNorm::visit_attributes(ov::AttributeVisitor& visitor) {
    visitor.on_attribute("num_groups", m_num_groups);
    visitor.on_attribute("epsilon", m_epsilon);
    visitor.on_attribute("channels_last", m_channels_last);
    visitor.on_attribute("silu", m_silu);
    visitor.on_attribute("emit_sum", m_emit_sum);
    return true;
}

bool GroupNorm::has_evaluate() const {
    DType d;
    return to_dtype(get_input_element_type(0), &d);
}

bool GroupNorm::evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
    const ov::Tensor& x = inputs[0];
    const ov::Shape shape = x.get_shape();
    Problem p;
    if (!to_dtype(x.get_element_type(), &p.dtype) || !to_dtype(inputs[1].get_element_type(), &p.param_dtype)) {
        OPENVINO_THROW("GroupnormGroupNorm: unsupported element types x ", x.get_element_type(), ", weight ",
                       inputs[1].get_element_type());
    }
    if (shape.size() < 2) OPENVINO_THROW("GroupnormGroupNorm: x must have at least 2 dims, got ", shape);
    const size_t c_axis = m_channels_last ? shape.size() - 1 : 1;
    p.batch = static_cast<std::int64_t>(shape[0]);
    p.channels = static_cast<std::int64_t>(shape[c_axis]);
    p.spatial = 1;
    for (size_t i = 1; i < shape.size(); ++i)
        if (i != c_axis) p.spatial *= static_cast<std::int64_t>(shape[i]);
    p.groups = m_num_groups;
    p.channels_last = m_channels_last;
    p.eps = m_epsilon;
    p.activation = m_silu ? Activation::silu : Activation::none;
    const auto c = static_cast<size_t>(p.channels);
    for (size_t i = 1; i < inputs.size(); ++i) {
        if (i == 3) {
            if (inputs[3].get_shape() != shape)
                OPENVINO_THROW("GroupnormGroupNorm: skip must have x's shape ", shape, ", got ", inputs[3].get_shape());
        } else if (inputs[i].get_size() != c) {
            OPENVINO_THROW("GroupnormGroupNorm: input ", i, " must have ", c, " elements (one per channel), got ",
                           inputs[i].get_shape());
        }
    }
    outputs[0].set_shape(shape);
    if (m_emit_sum) outputs[1].set_shape(shape);
    ForwardArgs a;
    a.x = x.data();
    a.weight = inputs[1].data();
    a.bias = inputs[2].data();
    if (inputs.size() > 3) a.skip = inputs[3].data();
    if (inputs.size() > 4) a.skip_bias = inputs[4].data();
    a.y = outputs[0].data();
    if (m_emit_sum) a.sum_out = outputs[1].data();
    Exec e;
    e.num_threads = parallel_get_max_threads();  // the arena this request runs in
    e.parallel_for = ov_parallel_for;
    const Result r = forward(p, a, e);
    if (!r) OPENVINO_THROW("GroupnormGroupNorm: ", r.message);
    return true;
}

// ------------------------------------------------------------------ ONNX frontend
namespace {

using ov::Output;
using ov::op::v0::Constant;

std::int64_t int_attr(const ov::frontend::NodeContext& ctx, const char* name, std::int64_t dflt, bool required) {
    if (!ctx.has_attribute(name)) {
        if (required) OPENVINO_THROW(ctx.get_op_type(), " '", ctx.get_name(), "': needs the attribute ", name);
        return dflt;
    }
    return ctx.get_attribute<std::int64_t>(name);
}

float float_attr(const ov::frontend::NodeContext& ctx, const char* name, float dflt) {
    return ctx.has_attribute(name) ? ctx.get_attribute<float>(name) : dflt;
}

std::int64_t static_channels(const ov::frontend::NodeContext& ctx, const Output<ov::Node>& x, bool channels_last) {
    const auto& ps = x.get_partial_shape();
    if (ps.rank().is_dynamic() || ps.rank().get_length() < 2)
        OPENVINO_THROW(ctx.get_op_type(), " '", ctx.get_name(), "': X must have a known rank of at least 2, got ", ps);
    const auto& c = channels_last ? ps[ps.rank().get_length() - 1] : ps[1];
    if (c.is_dynamic())
        OPENVINO_THROW(ctx.get_op_type(), " '", ctx.get_name(), "': the channel dim of X must be static, got ", ps);
    return c.get_length();
}

std::int64_t static_length(const ov::frontend::NodeContext& ctx, const Output<ov::Node>& v, const char* name) {
    const auto& ps = v.get_partial_shape();
    if (ps.is_dynamic() || ps.size() != 1)
        OPENVINO_THROW(ctx.get_op_type(), " '", ctx.get_name(), "': ", name, " must be 1-D with a static length, got ",
                       ps);
    return static_cast<std::int64_t>(ps[0].get_length());
}

int precision_bits(const ov::element::Type& t) {
    if (t == ov::element::f64) return 53;
    if (t == ov::element::f32) return 24;
    if (t == ov::element::f16) return 11;
    if (t == ov::element::bf16) return 8;
    return 0;
}

Output<ov::Node> reshape(const Output<ov::Node>& v, std::vector<std::int64_t> dims) {
    auto target = Constant::create(ov::element::i64, ov::Shape{dims.size()}, dims);
    return std::make_shared<ov::op::v1::Reshape>(v, target, true);
}

// ONNX GroupNormalization-18 (scale/bias per group) and -21 (per channel, stash_type).
ov::OutputVector convert_group_normalization(const ov::frontend::NodeContext& ctx) {
    if (ctx.get_input_size() != 3)
        OPENVINO_THROW("GroupNormalization '", ctx.get_name(), "': takes X, scale and bias, got ",
                       ctx.get_input_size(), " inputs");
    auto x = ctx.get_input(0);
    auto scale = ctx.get_input(1);
    auto bias = ctx.get_input(2);
    const std::int64_t groups = int_attr(ctx, "num_groups", 0, true);
    const float eps = float_attr(ctx, "epsilon", 1e-5f);
    const std::int64_t stash = int_attr(ctx, "stash_type", 1, false);
    const std::int64_t c = static_channels(ctx, x, false);
    if (groups <= 0 || c % groups != 0)
        OPENVINO_THROW("GroupNormalization '", ctx.get_name(), "': num_channels ", c,
                       " is not divisible by num_groups ", groups);
    const std::int64_t ls = static_length(ctx, scale, "scale"), lb = static_length(ctx, bias, "bias");
    if (ls != lb || (ls != c && ls != groups))
        OPENVINO_THROW("GroupNormalization '", ctx.get_name(), "': scale and bias must both have num_channels ", c,
                       " elements (opset 21) or num_groups ", groups, " (opset 18), got ", ls, " and ", lb);
    if (ls != c) {  // opset 18: one value per group, repeated over its channels
        auto cs = ov::as_type_ptr<Constant>(scale.get_node_shared_ptr());
        auto cb = ov::as_type_ptr<Constant>(bias.get_node_shared_ptr());
        if (cs && cb && scale.get_element_type() == bias.get_element_type()) {
            // constants (the usual case): repeated here, so later passes see constant parameters
            const auto vs = cs->cast_vector<double>(), vb = cb->cast_vector<double>();
            std::vector<double> rs, rb;
            for (std::int64_t i = 0; i < c; ++i) {
                rs.push_back(vs[i / (c / groups)]);
                rb.push_back(vb[i / (c / groups)]);
            }
            scale = Constant::create(scale.get_element_type(), ov::Shape{static_cast<size_t>(c)}, rs);
            bias = Constant::create(bias.get_element_type(), ov::Shape{static_cast<size_t>(c)}, rb);
        } else {
            auto per_channel = Constant::create(ov::element::i64, ov::Shape{2}, {groups, c / groups});
            scale = reshape(std::make_shared<ov::op::v3::Broadcast>(reshape(scale, {groups, 1}), per_channel), {c});
            bias = reshape(std::make_shared<ov::op::v3::Broadcast>(reshape(bias, {groups, 1}), per_channel), {c});
        }
    }
    ov::element::Type st;
    switch (stash) {
        case 1: st = ov::element::f32; break;
        case 10: st = ov::element::f16; break;
        case 11: st = ov::element::f64; break;
        case 16: st = ov::element::bf16; break;
        default:
            OPENVINO_THROW("GroupNormalization '", ctx.get_name(), "': stash_type must be 1, 10, 11 or 16 ",
                           "(float32, float16, float64, bfloat16), got ", stash);
    }
    const auto et = x.get_element_type();
    if (precision_bits(et) == 0)
        OPENVINO_THROW("GroupNormalization '", ctx.get_name(), "': X must be f32, f16, bf16 or f64, got ", et);
    if (precision_bits(st) >= precision_bits(et)) {
        // stage one at least as precise as X's type: the kernel's float accumulation is that; one node
        auto gn = std::make_shared<GroupNorm>(ov::OutputVector{x, scale, bias}, groups, eps, false, false, false);
        gn->set_friendly_name(ctx.get_name());
        return {gn->output(0)};
    }
    // a narrower stash type: normalize in it, then the affine in X's type (the spec's two stages)
    auto xs = std::make_shared<ov::op::v0::Convert>(x, st);
    auto ones = Constant::create(st, ov::Shape{static_cast<size_t>(c)}, std::vector<float>(c, 1.0f));
    auto zeros = Constant::create(st, ov::Shape{static_cast<size_t>(c)}, std::vector<float>(c, 0.0f));
    auto gn = std::make_shared<GroupNorm>(ov::OutputVector{xs, ones, zeros}, groups, eps, false, false, false);
    gn->set_friendly_name(ctx.get_name() + "/stage_one");
    auto back = std::make_shared<ov::op::v0::Convert>(gn, et);
    std::vector<std::int64_t> dims(x.get_partial_shape().rank().get_length(), 1);
    dims[1] = c;
    auto y = std::make_shared<ov::op::v1::Add>(std::make_shared<ov::op::v1::Multiply>(back, reshape(scale, dims)),
                                               reshape(bias, dims));
    return {y->output(0)};
}

// gamma/beta (and SkipGroupNorm's bias) in the one parameter type the op takes: X's or f32
Output<ov::Node> as_param(const Output<ov::Node>& v, const ov::element::Type& pt) {
    if (v.get_element_type() == pt) return v;
    return std::make_shared<ov::op::v0::Convert>(v, pt);
}

ov::OutputVector convert_contrib(const ov::frontend::NodeContext& ctx, bool with_skip) {
    const size_t n_in = ctx.get_input_size();
    const char* op = with_skip ? "com.microsoft.SkipGroupNorm '" : "com.microsoft.GroupNorm '";
    if (with_skip ? (n_in < 4 || n_in > 5) : n_in != 3)
        OPENVINO_THROW(op, ctx.get_name(), "': takes ", with_skip ? "X, gamma, beta, skip, [bias]" : "X, gamma, beta",
                       ", got ", n_in, " inputs");
    auto x = ctx.get_input(0);
    const auto et = x.get_element_type();
    if (et != ov::element::f32 && et != ov::element::f16)
        OPENVINO_THROW(op, ctx.get_name(), "': X must be float32 or float16, got ", et);
    const std::int64_t groups = int_attr(ctx, "groups", 0, true);
    const std::int64_t act = int_attr(ctx, "activation", 0, true);
    if (act != 0 && act != 1) OPENVINO_THROW(op, ctx.get_name(), "': activation must be 0 or 1, got ", act);
    const std::int64_t cl = int_attr(ctx, "channels_last", 1, false);
    if (cl != 0 && cl != 1) OPENVINO_THROW(op, ctx.get_name(), "': channels_last must be 0 or 1, got ", cl);
    const float eps = float_attr(ctx, "epsilon", 1e-5f);
    const std::int64_t c = static_channels(ctx, x, cl != 0);
    if (groups <= 0 || c % groups != 0)
        OPENVINO_THROW(op, ctx.get_name(), "': num_channels ", c, " is not divisible by groups ", groups);
    auto gamma = ctx.get_input(1), beta = ctx.get_input(2);
    if (static_length(ctx, gamma, "gamma") != c || static_length(ctx, beta, "beta") != c)
        OPENVINO_THROW(op, ctx.get_name(), "': gamma and beta must have ", c, " elements");
    const auto pt = gamma.get_element_type() == et && beta.get_element_type() == et ? et : ov::element::f32;
    ov::OutputVector args{x, as_param(gamma, pt), as_param(beta, pt)};
    if (with_skip) {
        auto skip = ctx.get_input(3);
        if (skip.get_element_type() != et)
            OPENVINO_THROW(op, ctx.get_name(), "': skip must have X's type ", et, ", got ", skip.get_element_type());
        const auto& xs = x.get_partial_shape();
        const auto& ss = skip.get_partial_shape();
        if (!(ss == xs)) {
            // (N, C) or (N, 1.., C) / (N, C, 1..): one value per sample and channel, broadcast over space
            const auto rank = xs.rank().get_length();
            if (ss.rank().is_dynamic() || (ss.rank().get_length() != 2 && ss.rank().get_length() != rank))
                OPENVINO_THROW(op, ctx.get_name(), "': skip must have X's shape ", xs, ", or (N, C), got ", ss);
            std::vector<std::int64_t> dims(rank, 1);
            dims[0] = 0;
            dims[cl ? rank - 1 : 1] = c;
            skip = std::make_shared<ov::op::v3::Broadcast>(reshape(skip, dims),
                                                           std::make_shared<ov::op::v3::ShapeOf>(x));
        }
        args.push_back(skip);
        if (n_in == 5 && !ctx.input_is_none(4)) {
            auto b = ctx.get_input(4);
            if (b.get_element_type() != et)
                OPENVINO_THROW(op, ctx.get_name(), "': bias must have X's type ", et, ", got ", b.get_element_type());
            if (static_length(ctx, b, "bias") != c)
                OPENVINO_THROW(op, ctx.get_name(), "': bias must have ", c, " elements");
            args.push_back(as_param(b, pt));
        }
    }
    auto gn = std::make_shared<GroupNorm>(args, groups, eps, cl != 0, act == 1, with_skip);
    gn->set_friendly_name(ctx.get_name());
    if (with_skip) return {gn->output(0), gn->output(1)};
    return {gn->output(0)};
}

}  // namespace

}  // namespace openvino
}  // namespace groupnorm

namespace gno = groupnorm::openvino;

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<gno::GroupNorm>>(),
    std::make_shared<ov::frontend::onnx::ConversionExtension>("GroupNormalization", gno::convert_group_normalization),
    std::make_shared<ov::frontend::onnx::ConversionExtension>(
        "GroupNorm", "com.microsoft",
        [](const ov::frontend::NodeContext& ctx) { return gno::convert_contrib(ctx, false); }),
    std::make_shared<ov::frontend::onnx::ConversionExtension>(
        "SkipGroupNorm", "com.microsoft",
        [](const ov::frontend::NodeContext& ctx) { return gno::convert_contrib(ctx, true); }),
}));
