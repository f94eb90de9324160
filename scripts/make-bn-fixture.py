"""The BatchNorm equivalence fixture (issue 12): a small residual CNN with BatchNorm, built in
PyTorch and exported to ONNX twice: by the TorchScript exporter with TrainingMode.TRAINING
(BN nodes kept in training form: training_mode=1, the running statistics as extra outputs;
GlobalAveragePool), and by the default (dynamo) exporter from eval mode, which folds every BN
into the conv before it and writes ReduceMean for the average pool. Then one SGD step (lr 0.1,
no momentum, one batch of 64 images) with the model in train mode. Writes into
tests/fixtures/bn-resnet/:
  model-train.onnx               the model before the step, BN in training form
  model-eval.onnx                the same as the default exporter writes it (BN folded)
  batch.safetensors              x (64x3x12x12 f32), y (64 i64 labels)
  after.safetensors              every parameter and running statistic after the step
  before.safetensors             every parameter and running statistic before the step
  logits.safetensors             the batch's logits before the step: train (train mode) and
                                 eval (eval mode)
Run with PyTorch from PyPI (scripts/peer-bench.sh installs it into ~/.cache/ecc/torch-venv):
  ~/.cache/ecc/torch-venv/bin/python scripts/make-bn-fixture.py
The Rust test (tests/bn_train.rs) needs only the committed files."""
import os, sys
import onnx
from onnx import numpy_helper
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from peer_bench import Block  # the basic block of `ecc new resnet:` (scripts/peer_bench.py)

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "bn-resnet")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(8, momentum=0.3)  # ONNX momentum 0.7
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def main():
    torch.manual_seed(12)
    net = Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c))
                m.bias.copy_(torch.randn(c) * 0.2)
                m.running_mean.copy_(torch.randn(c) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(c))
    x = torch.randn(64, 3, 12, 12)
    y = torch.randint(0, 10, (64,))
    os.makedirs(OUT, exist_ok=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    # The default exporter folds BatchNormalization into the conv before it (in eval and
    # train mode alike) and writes ReduceMean for the average pool.
    net.eval()
    with torch.no_grad():
        eval_logits = net(x)
    torch.onnx.export(net, (x[:2],), os.path.join(OUT, "model-eval.onnx"),
                      input_names=["x"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("N")}}, dynamo=True,
                      external_data=False)
    net.load_state_dict(state)
    torch.onnx.export(net, (x[:2],), os.path.join(OUT, "model-train.onnx"),
                      input_names=["x"], output_names=["logits"], dynamo=False,
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    # The TorchScript export traces in train mode, which moves the running statistics (and
    # writes the moved ones): restore them, in the module and in the file.
    net.load_state_dict(state)
    path = os.path.join(OUT, "model-train.onnx")
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name in state:
            init.CopyFrom(numpy_helper.from_array(state[init.name].numpy(), init.name))
    onnx.save(m, path)
    net.train()
    save_file({"x": x, "y": y}, os.path.join(OUT, "batch.safetensors"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.0)
    opt.zero_grad()
    logits = net(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    save_file({"train": logits.detach(), "eval": eval_logits},
              os.path.join(OUT, "logits.safetensors"))
    after = {k: v.detach().clone().float() for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(after, os.path.join(OUT, "after.safetensors"))
    save_file({k: v.float() for k, v in state.items() if not k.endswith("num_batches_tracked")},
              os.path.join(OUT, "before.safetensors"))
    print("loss", loss.item())


if __name__ == "__main__":
    sys.exit(main())
