"""PyTorch side of scripts/peer-bench.sh: the cases of `ecc bench train`, same models, batch
sizes, optimizer (SGD, lr 1e-3, momentum 0.9) and step (forward, cross-entropy, backward,
optimizer step), on the CPU with 2 threads. Prints JSON: per case the median step time and
the peak memory of this process, plus the machine's f32 matmul rate (1024x1024)."""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def mlp(sizes, bias):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


class Block(nn.Module):
    """A basic block as `ecc new resnet:` builds it: conv-BN-ReLU-conv-BN, plus the input
    (identity, or a 1x1 conv with BN where the shape changes), then ReLU."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(n, cin=3, widths=(16, 32, 64), classes=10):
    """The CIFAR ResNet of `ecc new resnet:3x32x32-nN` (6n + 2 layers)."""
    layers = [nn.Conv2d(cin, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    c = widths[0]
    for s, w in enumerate(widths):
        for j in range(n):
            layers.append(Block(c, w, 2 if s > 0 and j == 0 else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


class PlainBlock(Block):
    """The block of `ecc new plain:`: the same without the shortcut."""

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)))


def residual(spec):
    """The network of an ecc `resnet:` or `plain:` spec, e.g. plain:1x28x28-n3-w8.16.32
    (options n and w only; 10 classes), with its input shape."""
    kind, rest = spec.split(":")
    parts = rest.split("-")
    shape = tuple(int(d) for d in parts[0].split("x"))
    n, widths = 3, (16, 32, 64)
    for p in parts[1:]:
        if p[0] == "n":
            n = int(p[1:])
        elif p[0] == "w":
            widths = tuple(int(w) for w in p[1:].split("."))
        else:
            raise SystemExit(f"--net {spec}: option {p} not supported here")
    block = {"resnet": Block, "plain": PlainBlock}[kind]
    layers = [nn.Conv2d(shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
              nn.ReLU()]
    c = widths[0]
    for s, w in enumerate(widths):
        for j in range(n):
            layers.append(block(c, w, 2 if s > 0 and j == 0 else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers), shape


CASES = {
    "mlp-784-64x4-10": (lambda: mlp([784, 64, 64, 64, 64, 10], False), (784,), 64),
    "mlp-784-512-512-10": (lambda: mlp([784, 512, 512, 10], True), (784,), 128),
    "cnn-28x28": (cnn, (1, 28, 28), 64),
    "resnet20-32x32": (lambda: resnet(3), (3, 32, 32), 128),
}


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def step_ms(name, runs, net=None, batch=None):
    torch.manual_seed(0)
    if net:
        model, shape = residual(net)
    else:
        make, shape, batch = CASES[name]
        model = make()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, *shape)
    y = torch.randint(0, 10, (batch,))

    def step():
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return (time.perf_counter() - t) * 1e3

    for _ in range(3):
        step()
    return median([step() for _ in range(runs)])


def matmul_gflops():
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * 1024**3 / median(times) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--matmul", action="store_true", help="only the matmul rate")
    ap.add_argument("--net", help="an ecc resnet:/plain: spec instead of a case")
    ap.add_argument("--batch", type=int, default=128, help="the batch size for --net")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.matmul:
        out["matmul_gflops"] = matmul_gflops()
    elif args.net:
        out["cases"] = [{"name": args.net,
                         "ms_per_step": step_ms(None, args.runs, args.net, args.batch),
                         "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}]
    else:
        names = [args.case] if args.case else sorted(CASES)
        out["cases"] = [{"name": n, "ms_per_step": step_ms(n, args.runs),
                         "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                        for n in names]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
