"""COEmuNet in PyTorch, written from docs/trainer.md with the reference code's
module names (so that coemu's checkpoints load with load_state_dict(strict=True)):
used by test_safetensors.py (weights and forward parity with coemu) and
torch_anchor.py (the PyTorch + cuDNN anchor of scripts/gpu-check-trainer.sh)."""
import torch
from torch import nn


class CBR(nn.Module):
    def __init__(self, cin, cout, k, s=1, p=0, dim=3):
        super().__init__()
        conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dim == 3 else (nn.Conv2d, nn.BatchNorm2d)
        self.layers = nn.Sequential(conv(cin, cout, k, s, p), bn(cout), nn.ReLU())

    def forward(self, x):
        return self.layers(x)


class Block(nn.Module):
    """residual_Block: CBR0 (k3, stride, pad 1), CBR1 (k3, pad 1), short_CBR0
    (1x1x1): on the block's own output (reference shortcut, also built unused
    in identity blocks) or on its input with the stride (input shortcut)."""

    def __init__(self, cin, cout, stride, conv_skip, shortcut):
        super().__init__()
        self.CBR0, self.CBR1 = CBR(cin, cout, 3, stride, 1), CBR(cout, cout, 3, 1, 1)
        self.conv_skip, self.shortcut = conv_skip, shortcut
        if shortcut == "reference":
            self.short_CBR0 = CBR(cout, cout, 1)
        elif conv_skip:
            self.short_CBR0 = CBR(cin, cout, 1, stride)

    def forward(self, x):
        x2 = self.CBR1(self.CBR0(x))
        if not self.conv_skip:
            return x2 + x
        return x2 + self.short_CBR0(x2 if self.shortcut == "reference" else x)


class Encoder(nn.Module):
    def __init__(self, stem, enc, shortcut):
        super().__init__()
        layers, c = [CBR(1, stem, 3), nn.MaxPool3d(2)], stem
        for width in enc:
            for b in range(3):
                layers.append(Block(c, width, 2 if b == 0 else 1, b == 0, shortcut))
                c = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, dec, nfreq):
        super().__init__()
        layers, ch = [], dec
        for _ in range(3):
            for j in range(1 if nfreq == 1 else 3):
                cin = ch if j == 0 else ch // 2
                if nfreq == 1:
                    layers += [nn.Conv2d(cin, ch // 2, 3, 1, 1), nn.BatchNorm2d(ch // 2), nn.ReLU()]
                else:
                    layers += [nn.Conv3d(cin, ch // 2, (1, 3, 3), 1, (0, 1, 1)),
                               nn.BatchNorm3d(ch // 2), nn.ReLU()]
            layers.append(nn.Upsample(scale_factor=2 if nfreq == 1 else (1, 2, 2), mode="nearest"))
            ch //= 2
        if nfreq == 1:
            layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        else:
            layers += [nn.Conv3d(ch, 1, (1, 3, 3), 1, (0, 1, 1)), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class COEmuNet(nn.Module):
    def __init__(self, nfreq, grid, stem, enc, latent, dec, shortcut):
        super().__init__()
        self.nfreq, self.grid, self.dec = nfreq, grid, dec
        for e in range(3):
            setattr(self, f"encoder{e}", Encoder(stem, enc, shortcut))
        n = (grid - 2) // 2
        for _ in range(3):
            n = (n - 1) // 2 + 1
        lg = grid // 8
        self.to_lat = nn.Linear(3 * enc[2] * n ** 3, latent)
        self.to_dec = nn.Linear(latent, dec * nfreq * lg * lg)
        if nfreq == 1:
            self.decoder = Decoder(dec, 1)
        else:
            self.decoder3d = Decoder(dec, nfreq)

    def forward(self, x):
        N, lg = x.shape[0], self.grid // 8
        h = torch.cat([getattr(self, f"encoder{e}")(x[:, e:e + 1]).flatten(1) for e in range(3)], 1)
        h = torch.relu(self.to_dec(self.to_lat(h)))
        if self.nfreq == 1:
            return self.decoder(h.view(N, self.dec, lg, lg)).view(N, 1, 1, self.grid, self.grid)
        return self.decoder3d(h.view(N, self.dec, self.nfreq, lg, lg))
