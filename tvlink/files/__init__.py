"""
File transfer over short connections (the standard's 文件传输): the file
service of the payment role (L{tvlink.files.server}), its client
(L{tvlink.files.client}), the exchange both speak
(L{tvlink.files.protocol}), where files may live (L{tvlink.files.names})
and the daily reconciliation file (L{tvlink.files.reconcile}).
"""
