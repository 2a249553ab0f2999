"""Helper modules that distillation methods attach to the student (regressors, embeddings, connectors).

Class names, constructor arguments, forward signatures and state_dict keys follow RepDistiller's
models/util.py, so checkpoints and calling code carry over unchanged.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError


def _optional_bn(channels, use_bn):
    """BatchNorm2d, or an empty Sequential placeholder that keeps the layer indices (and state_dict keys) fixed."""
    return nn.BatchNorm2d(channels) if use_bn else nn.Sequential()


def _conv_bn_leaky(conv_cls, in_channels, out_channels, use_bn):
    """3x3 same-size (transposed) conv, optional BN, LeakyReLU(0.1): three layers."""
    return [conv_cls(in_channels, out_channels, 3, 1, 1), _optional_bn(out_channels, use_bn),
            nn.LeakyReLU(0.1, inplace=True)]


def _factor_encoder(in_channels, factor_channels, use_bn):
    """Three conv blocks [B, in_channels, H, W] -> [B, factor_channels, H, W] (Paraphraser and Translator)."""
    return nn.Sequential(*_conv_bn_leaky(nn.Conv2d, in_channels, in_channels, use_bn),
                         *_conv_bn_leaky(nn.Conv2d, in_channels, factor_channels, use_bn),
                         *_conv_bn_leaky(nn.Conv2d, factor_channels, factor_channels, use_bn))


class Paraphraser(nn.Module):
    """Teacher-side auto-encoder of Factor Transfer (Kim et al., NeurIPS 2018): factor [B, k*C, H, W] and reconstruction."""

    def __init__(self, t_shape, k=0.5, use_bn=False):
        super().__init__()
        in_channels = t_shape[1]
        factor_channels = int(t_shape[1] * k)
        self.encoder = _factor_encoder(in_channels, factor_channels, use_bn)
        self.decoder = nn.Sequential(*_conv_bn_leaky(nn.ConvTranspose2d, factor_channels, factor_channels, use_bn),
                                     *_conv_bn_leaky(nn.ConvTranspose2d, factor_channels, in_channels, use_bn),
                                     *_conv_bn_leaky(nn.ConvTranspose2d, in_channels, in_channels, use_bn))

    def forward(self, f_s, is_factor=False):
        """[B, C, H, W] -> factor, or (factor, reconstruction [B, C, H, W]) unless `is_factor`."""
        factor = self.encoder(f_s)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder of Factor Transfer (Kim et al., NeurIPS 2018): [B, C_s, H, W] -> [B, k*C_t, H, W]."""

    def __init__(self, s_shape, t_shape, k=0.5, use_bn=True):
        super().__init__()
        self.encoder = _factor_encoder(s_shape[1], int(t_shape[1] * k), use_bn)

    def forward(self, f_s):
        return self.encoder(f_s)


def _check_same_length(s_shapes, t_shapes):
    if len(s_shapes) != len(t_shapes):
        raise UserError(f"student has {len(s_shapes)} feature maps to connect but teacher has {len(t_shapes)}")


class Connector(nn.Module):
    """Per-stage student-to-teacher connectors of AB (Heo et al., AAAI 2019): identity or ConvReg without ReLU."""

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(self._make_conenctors(s_shapes, t_shapes))

    @staticmethod
    def _make_conenctors(s_shapes, t_shapes):
        """One connector per stage; identity where channels and height already agree (RepDistiller's spelling)."""
        _check_same_length(s_shapes, t_shapes)
        return [nn.Sequential() if s[1] == t[1] and s[2] == t[2] else ConvReg(s, t, use_relu=False)
                for s, t in zip(s_shapes, t_shapes)]

    def forward(self, g_s):
        """List of [B, C_s, H_s, W_s] -> list of [B, C_t, H_t, W_t]."""
        return [connector(f_s) for connector, f_s in zip(self.connectors, g_s)]


class ConnectorV2(nn.Module):
    """Per-stage 1x1 conv + BN connectors of OFD (Heo et al., ICCV 2019): [B, C_s, H, W] -> [B, C_t, H, W]."""

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        self.s_shapes = s_shapes
        self.t_shapes = t_shapes
        self.connectors = nn.ModuleList(self._make_conenctors(s_shapes, t_shapes))

    def _make_conenctors(self, s_shapes, t_shapes):
        _check_same_length(s_shapes, t_shapes)
        return nn.ModuleList([self._build_feature_connector(t[1], s[1]) for s, t in zip(s_shapes, t_shapes)])

    @staticmethod
    def _build_feature_connector(t_channel, s_channel):
        """1x1 conv (He-normal over fan-out) and BN (weight 1, bias 0)."""
        conv = nn.Conv2d(s_channel, t_channel, kernel_size=1, stride=1, padding=0, bias=False)
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        conv.weight.data.normal_(0, math.sqrt(2. / fan_out))
        bn = nn.BatchNorm2d(t_channel)
        bn.weight.data.fill_(1)
        bn.bias.data.zero_()
        return nn.Sequential(conv, bn)

    def forward(self, g_s):
        return [connector(f_s) for connector, f_s in zip(self.connectors, g_s)]


def _regression_conv(s_shape, t_shape):
    """Conv mapping the student map onto the teacher's channels and size, or UserError if none fits."""
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise UserError(f"feature regression needs [B, C, H, W] maps on both sides, got student "
                        f"{list(s_shape)} and teacher {list(t_shape)}; pick another --hint_layer")
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_h == 2 * t_h:
        return nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    if s_h * 2 == t_h:
        return nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    if s_h >= t_h:
        return nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    raise UserError(f"cannot regress a {s_h}x{s_w} student map onto a {t_h}x{t_w} teacher map "
                    f"(needs s_H == 2*t_H, 2*s_H == t_H or s_H >= t_H); pick another --hint_layer")


class ConvReg(nn.Module):
    """Convolutional regressor of FitNets (Romero et al., ICLR 2015): [B, C_s, H_s, W_s] -> [B, C_t, H_t, W_t]."""

    def __init__(self, s_shape, t_shape, use_relu=True):
        super().__init__()
        self.use_relu = use_relu
        self.conv = _regression_conv(s_shape, t_shape)
        self.bn = nn.BatchNorm2d(t_shape[1])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.use_relu else x


class Regress(nn.Module):
    """Linear regression with ReLU for hints: [B, ...] flattened to [B, dim_in] -> [B, dim_out]."""

    def __init__(self, dim_in=1024, dim_out=1024):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.linear(x.view(x.shape[0], -1)))


class Embed(nn.Module):
    """Linear projection followed by L2 normalisation: [B, dim_in] -> unit-norm [B, dim_out]."""

    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x):
        return self.l2norm(self.linear(x.reshape(x.shape[0], -1)))


class LinearEmbed(nn.Module):
    """Linear projection: [B, ...] flattened to [B, dim_in] -> [B, dim_out]."""

    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.view(x.shape[0], -1))


class MLPEmbed(nn.Module):
    """Two-layer MLP (hidden 2*dim_out, ReLU) followed by L2 normalisation: [B, dim_in] -> [B, dim_out]."""

    def __init__(self, dim_in=1024, dim_out=128):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.l2norm = Normalize(2)

    def forward(self, x):
        x = self.relu(self.linear1(x.view(x.shape[0], -1)))
        return self.l2norm(self.linear2(x))


class Normalize(nn.Module):
    """Divide each row of [B, D] by its `power`-norm (no epsilon, as in RepDistiller)."""

    def __init__(self, power=2):
        super().__init__()
        self.power = power

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1. / self.power)
        return x.div(norm)


class Flatten(nn.Module):
    """[B, ...] -> [B, prod(...)]."""

    def forward(self, feat):
        return feat.view(feat.size(0), -1)


# (pooled size, channels) of a CIFAR ResNet feature at each RepDistiller layer index.
_POOL_EMBED_LAYERS = {0: (8, 16), 1: (8, 16), 2: (6, 32), 3: (4, 64), 4: (1, 64)}


class PoolEmbed(nn.Module):
    """Adaptive pooling, flatten, linear and L2 normalisation of a CIFAR ResNet feature at `layer`: -> [B, dim_out]."""

    def __init__(self, layer=0, dim_out=128, pool_type='avg'):
        super().__init__()
        if layer not in _POOL_EMBED_LAYERS:
            raise UserError(f"PoolEmbed supports layers {sorted(_POOL_EMBED_LAYERS)}, got {layer}")
        pool_size, channels = _POOL_EMBED_LAYERS[layer]
        self.embed = nn.Sequential()
        if layer <= 3 and pool_type == 'max':
            self.embed.add_module('MaxPool', nn.AdaptiveMaxPool2d((pool_size, pool_size)))
        elif layer <= 3 and pool_type == 'avg':
            self.embed.add_module('AvgPool', nn.AdaptiveAvgPool2d((pool_size, pool_size)))
        self.embed.add_module('Flatten', Flatten())
        self.embed.add_module('Linear', nn.Linear(channels * pool_size * pool_size, dim_out))
        self.embed.add_module('Normalize', Normalize(2))

    def forward(self, x):
        return self.embed(x)


class AAEmbed(nn.Module):
    """SemCKD projection (Chen et al., AAAI 2021): 1x1/3x3/1x1 convs, BN-ReLU between: [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, num_input_channels=1024, num_target_channels=128):
        super().__init__()
        self.num_mid_channel = 2 * num_target_channels
        mid = self.num_mid_channel
        self.regressor = nn.Sequential(
            nn.Conv2d(num_input_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, num_target_channels, kernel_size=1, bias=False),
        )

    def forward(self, x):
        return self.regressor(x)


def batch_gram(feat):
    """[B, ...] -> [B, B] inner products of the flattened per-sample features."""
    flat = feat.reshape(feat.shape[0], -1)
    return flat @ flat.t()


def align_pair(f_s, f_t):
    """Pool the larger of two square maps to the other's height: -> (student [B, C_s, h, h], teacher [B, C_t, h, h])."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        return F.adaptive_avg_pool2d(f_s, (t_h, t_h)), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, (s_h, s_h))


class SelfA(nn.Module):
    """Cross-layer attention of SemCKD (Chen et al., AAAI 2021): teacher-layer weights per student layer and sample.

    Each student layer i (query) and teacher layer j (key) is embedded from its row of the batch Gram matrix, so
    `input_channel` is the batch size: every batch must hold exactly `input_channel` samples (train with full
    batches). `s_n` / `s_t` are the student / teacher channel counts; `regressor{i}{j}` (an AAEmbed) projects student
    layer i onto teacher layer j's channels. State_dict keys are SemCKD's. Below 2 * factor samples the embeddings
    are 1-d, normalised to +-1, and the attention gets no gradient.
    """

    def __init__(self, s_len, t_len, input_channel, s_n, s_t, factor=4):
        super().__init__()
        if input_channel // factor < 1:
            raise UserError(f"SemCKD embeds batch Gram rows into batch_size // {factor} dimensions: "
                            f"--batch_size must be at least {factor}, got {input_channel}")
        names = [f"regressor{i}{j}" for i in range(s_len) for j in range(t_len)]
        if len(set(names)) < len(names):
            raise UserError(f"SemCKD's regressor names collide for {s_len} student and {t_len} teacher layers")
        self.batch_size = input_channel
        for j in range(t_len):
            self.add_module(f"key_weight{j}", MLPEmbed(input_channel, input_channel // factor))
        for i in range(s_len):
            self.add_module(f"query_weight{i}", MLPEmbed(input_channel, input_channel // factor))
        for i in range(s_len):
            for j in range(t_len):
                self.add_module(f"regressor{i}{j}", AAEmbed(s_n[i], s_t[j]))

    def attention(self, feat_s, feat_t):
        """softmax over teacher layers of <query_i, key_j>: -> [B, s_len, t_len]."""
        keys = torch.stack([getattr(self, f"key_weight{j}")(batch_gram(f)) for j, f in enumerate(feat_t)], dim=2)
        queries = torch.stack([getattr(self, f"query_weight{i}")(batch_gram(f)) for i, f in enumerate(feat_s)], dim=1)
        return F.softmax(torch.bmm(queries, keys), dim=-1)

    def forward(self, feat_s, feat_t):
        """s_len student maps [B, C_s_i, H, H] and t_len teacher maps -> (proj_value_stu[i][j] [B, C_t_j, h, h],
        value_tea[i][j] [B, C_t_j, h, h], attention [B, s_len, t_len]) with h = min(H_s_i, H_t_j)."""
        if feat_s[0].shape[0] != self.batch_size:
            raise ValueError(f"SelfA was built for batches of {self.batch_size} but got {feat_s[0].shape[0]} "
                             "samples; SemCKD needs full batches (drop_last)")
        proj_value_stu, value_tea = [], []
        for i, f_s in enumerate(feat_s):
            pairs = [align_pair(f_s, f_t) for f_t in feat_t]
            proj_value_stu.append([getattr(self, f"regressor{i}{j}")(s) for j, (s, _) in enumerate(pairs)])
            value_tea.append([t for _, t in pairs])
        return proj_value_stu, value_tea, self.attention(feat_s, feat_t)


def _conv1x1(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, stride=1, bias=False)


class SRRL(nn.Module):
    """Knowledge Distillation via Softmax Regression Representation Learning (Yang et al., ICLR 2021).

    CTKD's / SimKD's port: `transfer` (1x1 conv, BN, ReLU) maps the student's pooled feature [B, s_n] to the
    teacher's width t_n, and the teacher's classifier `cls_t` reads it. State_dict keys are theirs (transfer.0/1).
    """

    def __init__(self, *, s_n, t_n):
        super().__init__()
        self.transfer = nn.Sequential(_conv1x1(s_n, t_n), nn.BatchNorm2d(t_n), nn.ReLU(inplace=True))

    def forward(self, feat_s, cls_t):
        """feat_s [B, s_n] -> (trans_feat_s [B, t_n], pred_feat_s = cls_t(trans_feat_s) [B, num_classes])."""
        trans_feat_s = self.transfer(feat_s[:, :, None, None]).flatten(1)
        return trans_feat_s, cls_t(trans_feat_s)


class SimKD(nn.Module):
    """Knowledge Distillation with the Reused Teacher Classifier (Chen et al., CVPR 2022): the student's last map
    through a bottleneck projector (1x1, 3x3, 1x1 convs, each with BN and ReLU; middle width t_n // factor) onto the
    teacher's width t_n, pooled and classified by the teacher's classifier. State_dict keys are the official ones
    (transfer.0/1/3/4/6/7), as saved under the official checkpoints' 'proj'."""

    def __init__(self, *, s_n, t_n, factor=2):
        super().__init__()
        mid = t_n // factor
        if mid < 1:
            raise UserError(f"SimKD's projector width {t_n} // factor {factor} is 0; use a smaller factor")
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.transfer = nn.Sequential(
            _conv1x1(s_n, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, stride=1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            _conv1x1(mid, t_n), nn.BatchNorm2d(t_n), nn.ReLU(inplace=True))

    def forward(self, feat_s, feat_t, cls_t):
        """feat_s [B, s_n, H_s, H_s], feat_t [B, t_n, H_t, H_t] -> (trans_feat_s [B, t_n, h, h], trans_feat_t
        [B, t_n, h, h], pred_feat_s [B, num_classes]); the larger map is average-pooled to h = min(H_s, H_t)."""
        s_h, t_h = feat_s.shape[2], feat_t.shape[2]
        trans_feat_t = feat_t if s_h > t_h else F.adaptive_avg_pool2d(feat_t, (s_h, s_h))
        trans_feat_s, pred_feat_s = self.project(feat_s, t_h, cls_t)
        return trans_feat_s, trans_feat_t, pred_feat_s

    def project(self, feat_s, t_size, cls_t):
        """The student's side alone, given the teacher map's height `t_size`: feat_s pooled to t_size if larger,
        projected, then avg-pooled and classified by cls_t -> (trans_feat_s, pred_feat_s)."""
        if feat_s.shape[2] > t_size:
            feat_s = F.adaptive_avg_pool2d(feat_s, (t_size, t_size))
        trans_feat_s = self.transfer(feat_s)
        return trans_feat_s, cls_t(self.avg_pool(trans_feat_s).flatten(1))
