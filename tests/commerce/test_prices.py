"""Price arithmetic (no sockets): integers only, discounts rounded half up to
the minor unit, never below zero, whatever the coupon."""

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shopcast.plugins._commerce import price_order

prices = st.integers(min_value=0, max_value=100_000_000)
quantities = st.integers(min_value=1, max_value=99)
percent = st.builds(lambda v: {"kind": "percent", "value": v}, st.integers(0, 100))
amount = st.builds(lambda v: {"kind": "amount", "value": v}, st.integers(0, 10**12))
coupons = st.none() | percent | amount


@given(prices, quantities, coupons)
def test_totals_are_integers_never_below_zero(unit, quantity, coupon):
    subtotal, discount, total = price_order(unit, quantity, coupon)
    for value in (subtotal, discount, total):
        assert type(value) is int
    assert subtotal == unit * quantity
    assert 0 <= discount <= subtotal and total == subtotal - discount >= 0


@given(prices, quantities, st.integers(0, 100))
def test_percent_discount_is_rounded_half_up(unit, quantity, pct):
    subtotal, discount, _ = price_order(unit, quantity, {"kind": "percent", "value": pct})
    exact = Fraction(subtotal * pct, 100)
    assert abs(discount - exact) <= Fraction(1, 2)
    if exact - int(exact) == Fraction(1, 2):
        assert discount == int(exact) + 1


@given(prices, quantities, st.integers(0, 10**12))
def test_amount_discount_takes_at_most_the_subtotal(unit, quantity, value):
    subtotal, discount, total = price_order(unit, quantity, {"kind": "amount", "value": value})
    assert discount == min(value, subtotal)
    assert total == max(subtotal - value, 0)


@given(prices, quantities, coupons)
def test_more_units_never_cost_less(unit, quantity, coupon):
    # Without a coupon and with a percent coupon, the total grows with the quantity.
    if coupon is not None and coupon["kind"] == "amount":
        return
    assert price_order(unit, quantity + 1, coupon)[2] >= price_order(unit, quantity, coupon)[2]


@pytest.mark.parametrize("args", [
    (1.5, 1, None), (100, 1.0, None), (100, -1, None), (True, 1, None),
    (100, 1, {"kind": "percent", "value": 101}), (100, 1, {"kind": "percent", "value": 0.5}),
    (100, 1, {"kind": "amount", "value": -1}), (100, 1, {"kind": "bogus", "value": 1}),
])
def test_floats_and_nonsense_are_refused(args):
    with pytest.raises(ValueError):
        price_order(*args)


currencies = st.sampled_from(["EUR", "USD", "JPY", "KWD", "BRL"])


@given(prices, quantities, coupons, currencies)
def test_totals_in_every_currency_print_exactly(unit, quantity, coupon, currency):
    # Zero-decimal (JPY) and three-decimal (KWD) currencies: the minor unit
    # is what is stored; the printed amount is exact, never via a float.
    from decimal import Decimal

    from shopcast.plugins._payments import CURRENCY_EXPONENTS, format_amount

    _, _, total = price_order(unit, quantity, coupon)
    number, code = format_amount(total, currency).split(" ")
    assert code == currency
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    assert ("." in number) == (exponent > 0)
    assert Decimal(number).scaleb(exponent) == total


@given(st.integers(0, 10**6), st.integers(0, 10**6), quantities, coupons)
def test_a_flash_price_below_the_list_price_never_costs_more(flash, extra, quantity, coupon):
    listed = flash + extra
    assert price_order(flash, quantity, coupon)[2] <= price_order(listed, quantity, coupon)[2]
