"""A SIGKILL in the middle of a flash sale: a `shopcast serve` subprocess on
a temporary data directory, many concurrent buyers over HTTPS who take holds
and pay with test cards (succeed, decline, succeed after a delay), the server
killed once part of the holds are granted, restarted on the same data
directory, and left to reconcile (unpaid holds expire, the provider's events
are delivered again). Then, from the database on disk: every payment taken is
a paid order or was refunded, paid orders equal succeeded payments, no order
was paid twice, and sold units never exceed the stock."""

from pathlib import Path

import trio

from shopcast.bench._commerce import FlashSale, ServerProcess, ledger

STOCK = 40
BUYERS = 120
CARDS = ("4242424242424242", "4242424242424242", "4000000000000077", "4000000000000002")
DURABILITY_CONFIG = """
[commerce]
hold_expiry_s = 12.0
hold_check_interval_s = 0.5
[payments]
test_delay_s = 2.0
retry_base_s = 0.2
retry_max_s = 2.0
reconcile_interval_s = 1.0
[rooms]
push_lost_end_after_s = 3600
"""


async def test_sigkill_mid_flash_sale_then_restart_reconciles(tmp_path: Path):
    config = tmp_path / "durability.toml"
    config.write_text(DURABILITY_CONFIG)
    server = ServerProcess(tmp_path / "data", config)
    await trio.to_thread.run_sync(server.start)
    try:
        async with trio.open_nursery() as nursery:
            sale = FlashSale(server, stock=STOCK, buyers=BUYERS, connections=12)
            await sale.setup(nursery)
            stopped = trio.Event()

            async def kill_when_told() -> None:
                await stopped.wait()
                await trio.to_thread.run_sync(server.kill)

            nursery.start_soon(kill_when_told)
            with trio.fail_after(120):
                result = await sale.run(pay_card=lambda i: CARDS[i % len(CARDS)],
                                        stop_after_holds=STOCK // 2, stopped=stopped)
            nursery.cancel_scope.cancel()
        assert stopped.is_set() and server.process.poll() is not None
        assert result.errors > 0, "the kill should have cut some buyers off"
        before = ledger(server.data_dir, sale.sku_id)
        assert before["held_units"] + before["sold_units"] + before["stock_left"] == STOCK

        await trio.to_thread.run_sync(server.start)
        with trio.fail_after(90):
            while True:
                book = ledger(server.data_dir, sale.sku_id)
                if book["pending_orders"] == 0 and book["events_undelivered"] == 0:
                    break
                await trio.sleep(0.5)
    finally:
        await trio.to_thread.run_sync(server.stop)
    book = ledger(server.data_dir, sale.sku_id)
    print("before the kill:", before, "after reconciliation:", book, "buyers saw:",
          {"holds": len(result.holds), "sold_out": result.sold_out, "paid_pages": result.paid_pages,
           "cut_off": result.errors})
    # Every payment the provider took (as the buyers' pages said) is accounted for.
    assert book["taken_payments"] >= result.paid_pages > 0
    assert book["paid_orders"] == book["succeeded_payments"]
    assert book["paid_twice"] == 0
    assert book["sold_units"] + book["stock_left"] == STOCK
    assert book["sold_units"] <= STOCK and book["held_units"] == 0
    assert len(result.holds) <= STOCK
