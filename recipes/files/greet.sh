#!/bin/sh
echo "hello, $(id -un) from imgbuild"
