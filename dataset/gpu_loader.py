"""A loader whose whole dataset lives on the training device as uint8; batches are augmented there.

Same augmentation law as the CPU path (dataset.cifar100.train_transform): a crop at a uniform offset
of the image zero-padded by 4 pixels, a horizontal flip with p = 0.5, then ToTensor + Normalize.
Crop and flip are one gather with per-sample row/column indices, so no Python loop over samples.
"""
import torch
import torch.nn.functional as F

from dataset.cifar100 import CROP_PADDING


class GpuResidentLoader:
    """Iterates batches of float32 NCHW images on `device`.

    Train batches: (images, targets), or (images, targets, index) with_index; with strong_view, dicts
    {images, targets, [index,] images_strong} where images_strong is a second view of the same samples under the
    strong augmentation of dataset.strong_aug. Each epoch's order, crops and flips come from a generator seeded with
    seed + epoch; `set_epoch` picks the epoch, otherwise every `__iter__` advances it by one. Ranks > 0 draw their
    augmentation from their own generator (the order stays shared, so the shards partition it).
    With world_size > 1, train takes rank's share of the first N - N % world_size permuted samples;
    eval takes indices rank::world_size, so every sample is seen exactly once over all ranks.
    """

    def __init__(self, images, labels, batch_size, mean, std, device, train=True, seed=0, with_index=False,
                 strong_view=False, rank=0, world_size=1):
        """images: uint8 [N, H, W, C] (numpy or tensor); labels: int [N]."""
        self.device = torch.device(device)
        images = torch.as_tensor(images).to(self.device).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W]
        self.height, self.width = images.shape[2:]
        self.pad = CROP_PADDING if train else 0
        self.images = F.pad(images, (self.pad,) * 4) if train else images  # zero border of `pad` pixels
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.with_index = with_index
        self.strong_view = strong_view and train
        self.unpadded = images if self.strong_view else None  # the strong view augments the original images
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return -(-self.num_samples() // self.batch_size)

    def __iter__(self):
        epoch_seed = self.seed + self.epoch
        generator = torch.Generator(device=self.device).manual_seed(epoch_seed)
        self.epoch += 1
        order = self._order(generator)
        if self.rank:  # the permutation is shared by all ranks; crops and flips must not be
            generator = torch.Generator(device=self.device).manual_seed(epoch_seed + 1_000_003 * self.rank)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self._batch(order[start:start + self.batch_size], generator)

    def num_samples(self):
        """Samples this rank sees per pass (train: its equal share; eval: indices rank::world_size)."""
        n = len(self.labels)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def _order(self, generator):
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size, device=self.device)
        order = torch.randperm(n, generator=generator, device=self.device)
        return order[:n - n % self.world_size][self.rank::self.world_size]

    def _batch(self, index, generator):
        images = self._augmented(index, generator) if self.train else self.images[index]
        images = images.float().div_(255).sub_(self.mean).div_(self.std)
        targets = self.labels[index]
        if self.strong_view:
            from dataset.strong_aug import strong_views_on_device
            strong = strong_views_on_device(self.unpadded[index], generator)
            strong = strong.float().div_(255).sub_(self.mean).div_(self.std)
            items = {"images": images, "targets": targets, "images_strong": strong}
            if self.with_index:
                items["index"] = index
            return items
        return (images, targets, index) if self.with_index else (images, targets)

    def _augmented(self, index, generator):
        """index: [B] -> uint8 [B, C, H, W]: random crop of the padded image, flipped with p = 0.5."""
        batch = len(index)
        offsets = torch.randint(0, 2 * self.pad + 1, (2, batch), generator=generator, device=self.device)
        flip = torch.randint(0, 2, (batch, 1), generator=generator, device=self.device).bool()
        rows = offsets[0][:, None] + torch.arange(self.height, device=self.device)  # [B, H]
        cols = torch.arange(self.width, device=self.device).expand(batch, -1)
        cols = offsets[1][:, None] + torch.where(flip, self.width - 1 - cols, cols)  # [B, W]
        channels = torch.arange(self.images.shape[1], device=self.device)
        return self.images[index[:, None, None, None], channels[None, :, None, None],
                           rows[:, None, :, None], cols[:, None, None, :]]
