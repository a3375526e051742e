"""A SIGKILL in the middle of a flash sale: a `shopcast serve` subprocess on
a temporary data directory, three times more concurrent buyers than units
over HTTPS, who take holds and pay with test cards (succeed, decline, succeed
after a delay); the server is killed under stock contention, once the units
ran out for some buyers while others are still buying and paying; restarted
on the same data directory, some buyers retry their Buy Now with the same
Idempotency-Key (the same answers come back), and the server is left to
reconcile (unpaid holds expire, the provider's events are delivered again).
Then, from the database on disk: every payment taken is a paid order or was
refunded, paid orders equal succeeded payments, no order was paid twice, no
buyer holds two orders, and sold units plus the stock left equal the stock."""

import sqlite3

from pathlib import Path

import trio

from shopcast.bench._commerce import FlashSale, ServerProcess, ledger

STOCK = 40
BUYERS = 120
SOLD_OUT_BEFORE_KILL = 5
"""The server is killed once this many buyers were told the units ran out."""
RETRIES = 8
"""Buyers of each kind (held, sold out, cut off) who retry after the restart."""
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
                                        stop_when=lambda r: r.sold_out >= SOLD_OUT_BEFORE_KILL,
                                        stopped=stopped)
            nursery.cancel_scope.cancel()
        assert stopped.is_set() and server.process.poll() is not None
        assert result.errors > 0, "the kill should have cut some buyers off"
        assert result.sold_out >= SOLD_OUT_BEFORE_KILL, "the kill should land under contention"
        before = ledger(server.data_dir, sale.sku_id)
        assert before["held_units"] + before["sold_units"] + before["stock_left"] == STOCK

        await trio.to_thread.run_sync(server.start)
        # Buyers retry with the same Idempotency-Key: those who were answered
        # get the same answer (the same order, or sold out); those cut off get
        # at most one order between their two tries.
        answered = sorted(result.answers)
        held = [i for i in answered if result.answers[i][0] == 201][:RETRIES]
        refused = [i for i in answered if result.answers[i][1] == "sold_out"][:RETRIES]
        cut_off = sorted(set(range(BUYERS)) - set(answered))[:RETRIES]
        assert held and refused and cut_off
        with trio.fail_after(60):
            again = await sale.buy_again(held + refused + cut_off)
        for index in held + refused:
            assert again[index] == result.answers[index], (index, again[index], result.answers[index])
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
    # Nothing sold twice: no buyer has two orders (the flash sale allows one),
    # and every retried hold is the order the buyer first got.
    connection = sqlite3.connect(f"file:{server.data_dir / 'shopcast.db'}?mode=ro", uri=True)
    try:
        most = connection.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM orders WHERE "
                                  "sku_id = ? GROUP BY buyer_id)", (sale.sku_id,)).fetchone()[0]
        retried = {r[0] for r in connection.execute(
            "SELECT id FROM orders WHERE id IN (%s)" % ",".join("?" * len(held)),
            [result.answers[i][1] for i in held])}
    finally:
        connection.close()
    assert most == 1
    assert retried == {result.answers[i][1] for i in held}
