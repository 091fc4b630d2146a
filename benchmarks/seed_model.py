"""The seed document's NIN class, the baseline of the benchmarks (kept apart from the toolkit's models)."""
from torch import nn


class SeedNIN(nn.Module):
    """The seed document's network, as its author wrote it (the baseline's model)."""

    def __init__(self, in_channels=3, out_channels=10):
        super().__init__()
        def stage(cin, widths, kernel, pad, tail):
            layers = []
            for i, w in enumerate(widths):
                layers += [nn.Conv2d(cin, w, kernel if i == 0 else 1, padding=pad if i == 0 else 0), nn.ReLU()]
                cin = w
            return nn.Sequential(*layers, *tail)
        self.features1 = stage(in_channels, (192, 160, 96), 5, 2, [nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5)])
        self.features2 = stage(96, (192, 192, 192), 5, 2, [nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5)])
        self.features3 = stage(192, (192, 192, out_channels), 3, 1, [])
        self.gap = nn.AvgPool2d(8, 1)

    def forward(self, x):
        return self.gap(self.features3(self.features2(self.features1(x)))).view(x.size(0), -1)
