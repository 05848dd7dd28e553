from twisted.application.service import ServiceMaker

tvlink = ServiceMaker(
    "tvlink", "tvlink.cli.tap", "JR/T 0109.4 Smart TV payment link: payment, platform, sandbox", "tvlink"
)
