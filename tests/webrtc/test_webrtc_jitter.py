"""The inbound audio jitter buffer: aiortc's fixed 80 ms hold is replaced by the configured one."""
from __future__ import annotations

import asyncio
import logging

import pytest
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from audio_server.settings import Settings
from audio_server.webrtc_peer import shorten_jitter_buffer

NAME = "_RTCRtpReceiver__jitter_buffer"


def _frames_out(buffer: JitterBuffer, n: int) -> list[int]:
    """Feed n consecutive 20 ms Opus packets; the sequence numbers at which a frame came out."""
    released = []
    for seq in range(n):
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=960 * seq)
        packet._data = b"\xf8"  # the depayloaded Opus frame, as the receiver sets it before buffering
        _, frame = buffer.add(packet)
        if frame is not None:
            released.append(seq)
    return released


def test_receiver_buffer_is_swapped_for_a_shorter_one():
    async def run():
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("audio").receiver
            default = getattr(receiver, NAME)
            assert default._prefetch == 4  # aiortc's hold: if this changes, revisit shorten_jitter_buffer
            shorten_jitter_buffer(receiver, 1)
            short = getattr(receiver, NAME)
            assert short is not default and short._prefetch == 1
            # The first frame now comes out when the second packet arrives (20 ms), not the fifth (80 ms).
            assert _frames_out(short, 6)[0] == 1
            assert _frames_out(JitterBuffer(capacity=16, prefetch=4), 6)[0] == 4
        finally:
            await pc.close()

    asyncio.run(run())


def test_a_buffer_already_in_use_is_left_alone(caplog):
    async def run():
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("audio").receiver
            busy = getattr(receiver, NAME)
            _frames_out(busy, 2)
            with caplog.at_level(logging.WARNING):
                shorten_jitter_buffer(receiver, 1)
            assert getattr(receiver, NAME) is busy
            assert "keeping its 80 ms default" in caplog.text
        finally:
            await pc.close()

    asyncio.run(run())


@pytest.mark.parametrize("frames", [0, 9])
def test_setting_is_bounded(frames):
    with pytest.raises(ValueError, match="webrtc_jitter_frames"):
        Settings(webrtc_jitter_frames=frames)
