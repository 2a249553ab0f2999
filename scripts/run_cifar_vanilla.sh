#!/usr/bin/env sh
# Train the CIFAR-100 teachers the tables use (RepDistiller recipe: 240 epochs, batch 64, lr 0.05, decay at 150/180/210).
# Checkpoints land in save/models/<model>_cifar100_lr_<lr>_decay_0.0005_trial_0/. Extra flags pass through.
for model in wrn_40_2 resnet56 resnet110 resnet32x4 vgg13 ResNet50; do
    python train_teacher.py --model $model "$@"
done
