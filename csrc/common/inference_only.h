// The Autograd kernel of the inference-only ops (frame decoding, the prepacked Linear, the fused decode pass).
//
// Without one, autograd's not-implemented fallback gives their outputs a node that only warns when a backward pass
// reaches it, and the inputs then silently get no gradient. This kernel runs the op below autograd (without grad
// mode, as the samplers run it), and where grad mode is on and an input requires grad, it gives the floating-point
// outputs an Error node: the forward works, and a backward pass through it raises, naming the op.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace wmk {

inline void inference_only_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                    torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  torch::autograd::edge_list edges;
  if (at::GradMode::is_enabled()) {
    const auto add = [&](const at::Tensor& t) {
      if (t.defined() && t.requires_grad()) edges.push_back(torch::autograd::impl::gradient_edge(t));
    };
    for (const c10::IValue& arg : torch::jit::last(*stack, schema.arguments().size())) {
      if (arg.isTensor()) {
        add(arg.toTensor());
      } else if (arg.isList()) {  // Tensor[] and Tensor?[]
        for (const c10::IValue& item : arg.toListRef())
          if (item.isTensor()) add(item.toTensor());
      }
    }
  }
  {
    at::NoGradGuard no_grad;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }
  if (edges.empty()) return;
  const std::string name = schema.operator_name().name;
  auto node = c10::make_intrusive<torch::autograd::Error>(
      name + " has no backward: it is an inference-only op (the KV-cached sampling path). Call it under "
      "torch.no_grad() or torch.inference_mode(), or use the differentiable ops (temporal_attention, "
      "torch.nn.functional.linear, the layers' forward) where gradients are needed",
      std::move(edges));
  for (const c10::IValue& out : torch::jit::last(*stack, schema.returns().size())) {
    if (out.isTensor() && torch::autograd::isDifferentiableType(out.toTensor().scalar_type()))
      torch::autograd::set_history(out.toTensor(), node);
  }
}

}  // namespace wmk
